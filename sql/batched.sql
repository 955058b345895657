-- Rotation in batches for very large tables: each batch is a short transaction that commits,
-- so no lock is held for long. While it runs the table holds rows under both keys; the
-- application can read all of them only once the last batch has committed (or if it knows
-- all the keys). Idempotent: call it again after an interruption and it carries on, finding
-- the finished rows already current. It ends with one atomic pass over the whole table, which
-- picks up rows the application wrote with the old key meanwhile, or that moved behind the
-- batch front, and leaves the table fully rotated; that pass holds the table lock for a scan
-- of the whole table (writing only the stragglers).
--
-- The loop is the library's (sql below calls _credential_batched_start, then
-- _credential_reencrypt_batch until the final pass): each batch is the next batch_rows rows,
-- counted under the table lock, and carries the running totals in a bigint[]. The PL/pgSQL
-- holds no operator and no unqualified name: a procedure that COMMITs cannot fix its
-- search_path with a SET clause, and target_table must resolve with the caller's.
--
-- CREATE OR REPLACE: the upgrade script includes this file as it is.
CREATE OR REPLACE PROCEDURE credential_rotate._credential_reencrypt_batched(
    old_keys text[],
    new_key text,
    batch_rows integer,
    target_table text,
    secret_column text
)
LANGUAGE plpgsql
AS $$
DECLARE
    r record;
    resume pg_catalog.tid := '(0,0)';
    state pg_catalog.int8[];
BEGIN
    -- Before any row is read: the keys (22023), batch_rows, EXECUTE on a form of
    -- credential_reencrypt_batched (42501), autocommit (25001); marks the statement, whose
    -- text may hold the keys, as one the server log must not show.
    state := credential_rotate._credential_batched_start(old_keys, new_key, batch_rows);
    LOOP
        SELECT * INTO r FROM credential_rotate._credential_reencrypt_batch(
            old_keys, new_key, target_table, secret_column, batch_rows, resume, state);
        COMMIT;
        -- A NULL resume asked for the final pass, which has just committed.
        EXIT WHEN resume IS NULL;
        resume := r.resume;
        state := r.state;
    END LOOP;
END
$$;

CREATE OR REPLACE PROCEDURE @extschema@.credential_reencrypt_batched(
    old_key text,
    new_key text,
    batch_rows integer DEFAULT 50000,
    target_table text DEFAULT 'credential_profiles',
    secret_column text DEFAULT 'secret'
)
LANGUAGE plpgsql
AS $$
BEGIN
    -- The one-key form's own check first, so that its errors name old_key and new_key.
    PERFORM credential_rotate._credential_check_keys(old_key, new_key);
    CALL credential_rotate._credential_reencrypt_batched(
        ARRAY[old_key], new_key, batch_rows, target_table, secret_column);
END
$$;
COMMENT ON PROCEDURE @extschema@.credential_reencrypt_batched(text, text, integer, text, text) IS
    'Re-encrypts in batches of batch_rows rows, each committed on its own, then one atomic final pass over the whole table; CALL it in autocommit';

CREATE OR REPLACE PROCEDURE @extschema@.credential_reencrypt_batched(
    old_keys text[],
    new_key text,
    batch_rows integer DEFAULT 50000,
    target_table text DEFAULT 'credential_profiles',
    secret_column text DEFAULT 'secret'
)
LANGUAGE plpgsql
AS $$
BEGIN
    CALL credential_rotate._credential_reencrypt_batched(
        old_keys, new_key, batch_rows, target_table, secret_column);
END
$$;
COMMENT ON PROCEDURE @extschema@.credential_reencrypt_batched(text[], text, integer, text, text) IS
    'As credential_reencrypt_batched(text, ...) from any of several old keys; its final NOTICE gives the rows each old key opened';
