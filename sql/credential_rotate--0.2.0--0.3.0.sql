-- credential_rotate 0.2.0 -> 0.3.0
--
-- The library does the rest of 0.3.0 (row-level security refused, call state wiped on every
-- exit path, the table locked by the OID it resolved); the catalog changes are here:
-- - credential_decrypt and _credential_check_keys become VOLATILE: a function returning
--   plaintext must never be usable in an index, a generated column or statistics;
-- - credential_reencrypt_batched sizes its batches from the table's real size when it was
--   never analysed, and makes its final pass through _credential_reencrypt_blocks, so that a
--   role needs EXECUTE on the procedure alone;
-- - the internal helpers, which do nothing on their own, become executable by PUBLIC;
-- - several old keys in one call and the key census (at the end of this file): the array
--   forms of credential_reencrypt, credential_reencrypt_value and credential_reencrypt_batched,
--   credential_key_census and their helpers, and the audit column rows_by_old_key, as a fresh
--   install gets them from the library and sql/several_keys.sql.
--
-- tests/upgrade.sh requires the upgraded catalog to equal a fresh install's, object by
-- object: the procedure below must stay identical to sql/batched.sql and the grant to
-- sql/finalize.sql.
\echo Use "ALTER EXTENSION credential_rotate UPDATE TO '0.3.0'" to load this file. \quit

ALTER FUNCTION @extschema@.credential_decrypt(jsonb, text) VOLATILE;
ALTER FUNCTION @extschema@.credential_decrypt(text, text) VOLATILE;
ALTER FUNCTION @extschema@._credential_check_keys(text, text) VOLATILE;

CREATE OR REPLACE PROCEDURE @extschema@.credential_reencrypt_batched(
    old_key text,
    new_key text,
    batch_rows integer DEFAULT 50000,
    target_table text DEFAULT 'credential_profiles',
    secret_column text DEFAULT 'secret'
)
-- No SET search_path: a procedure with one cannot COMMIT, and target_table must resolve with
-- the caller's search_path. Everything else is schema-qualified.
LANGUAGE plpgsql
AS $$
DECLARE
    rel regclass;
    blocks bigint;
    rows_per_block bigint;
    sample bigint;
    step bigint;
    first_block bigint := 0;
    batch integer := 0;
    r record;
    total_updated bigint := 0;
BEGIN
    -- First of all a call into the library: it checks both keys (SQLSTATE 22023) and marks
    -- the statement, whose text holds the keys, as one the server log must not show.
    PERFORM @extschema@._credential_check_keys(old_key, new_key);
    IF batch_rows IS NULL OR batch_rows < 1 THEN
        RAISE EXCEPTION 'batch_rows must be a positive number of rows' USING ERRCODE = '22023';
    END IF;
    -- A missing table is reported by the final pass (without echoing a misplaced key).
    rel := pg_catalog.to_regclass(target_table);
    -- Batches are ranges of heap blocks, sized from the table's average rows per block.
    -- A partitioned parent has no blocks of its own: it goes straight to the final pass.
    blocks := coalesce(pg_catalog.pg_relation_size(rel)
                       / pg_catalog.current_setting('block_size')::pg_catalog.int8, 0);
    SELECT CASE WHEN c.reltuples >= 0 AND c.relpages > 0
                THEN pg_catalog.round(c.reltuples::pg_catalog.float8 / c.relpages::pg_catalog.float8)::pg_catalog.int8
           END
      INTO rows_per_block
      FROM pg_catalog.pg_class c WHERE c.oid = rel;
    IF rows_per_block IS NULL AND blocks > 0 THEN
        -- Never analysed (reltuples = -1): count the rows of the first blocks instead, with a
        -- TID range scan that reads only those blocks.
        sample := least(blocks, 64);
        EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s WHERE ctid < $1', rel)
           INTO rows_per_block USING pg_catalog.format('(%s,0)', sample)::pg_catalog.tid;
        rows_per_block := (rows_per_block + sample - 1) / sample;
    END IF;
    step := greatest(1, batch_rows::pg_catalog.int8 / greatest(coalesce(rows_per_block, 1), 1));
    WHILE first_block < blocks LOOP
        SELECT * INTO r FROM @extschema@._credential_reencrypt_blocks(
            old_key, new_key, target_table, secret_column, first_block, first_block + step);
        COMMIT;
        batch := batch + 1;
        total_updated := total_updated + r.updated;
        RAISE NOTICE 'credential_reencrypt_batched: batch % (blocks % to % of %): % re-sealed, % already current, % empty',
            batch, first_block, least(first_block + step, blocks) - 1, blocks, r.updated, r.already_current, r.empty;
        first_block := first_block + step;
    END LOOP;
    -- The final pass: the whole table in one atomic call (NULL block bounds).
    SELECT * INTO r FROM @extschema@._credential_reencrypt_blocks(
        old_key, new_key, target_table, secret_column, NULL, NULL);
    COMMIT;
    RAISE NOTICE 'credential_reencrypt_batched: final pass over % rows: % re-sealed, % already current, % empty; % re-sealed in all',
        r.scanned, r.updated, r.already_current, r.empty, total_updated + r.updated;
END
$$;

GRANT EXECUTE ON FUNCTION
    @extschema@._credential_reencrypt_row(oid, tid, text),
    @extschema@._credential_reencrypt_row_jsonb(oid, tid, jsonb),
    @extschema@._credential_reencrypt_take(tid),
    @extschema@._credential_reencrypt_take_jsonb(tid, jsonb),
    @extschema@._credential_status(text),
    @extschema@._credential_status_jsonb(jsonb),
    @extschema@._credential_audit_append(),
    @extschema@._credential_check_keys(text, text),
    @extschema@._credential_reencrypt_blocks(text, text, text, text, bigint, bigint)
  TO PUBLIC;

-- Several old keys in one call, and a census (0.3.0). The functions exactly as the library
-- declares them for a fresh install (compare the generated credential_rotate--0.3.0.sql).
-- credential_rotate::rotate::_credential_census_status
CREATE  FUNCTION "_credential_census_status"(
	"secret" text /* Option < DbText > */
) RETURNS INT /* i32 */
VOLATILE SECURITY INVOKER PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_credential_census_status_wrapper';

-- credential_rotate::rotate::_credential_census_status_jsonb
CREATE  FUNCTION "_credential_census_status_jsonb"(
	"secret" jsonb /* Option < RawJsonb > */
) RETURNS INT /* i32 */
VOLATILE SECURITY INVOKER PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_credential_census_status_jsonb_wrapper';

-- credential_rotate::functions::_credential_check_keys
CREATE  FUNCTION "_credential_check_keys"(
	"old_keys" TEXT[], /* :: std :: option :: Option < Array < '_, & '_ str > > */
	"new_key" TEXT /* Option < & str > */
) RETURNS bool /* bool */
VOLATILE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_credential_check_old_keys_wrapper';

-- credential_rotate::rotate::_credential_reencrypt_blocks
CREATE  FUNCTION "_credential_reencrypt_blocks"(
	"old_keys" TEXT[], /* :: std :: option :: Option < Array < '_, & '_ str > > */
	"new_key" TEXT, /* Option < & str > */
	"target_table" text, /* Option < DbText > */
	"secret_column" text, /* Option < DbText > */
	"first_block" bigint, /* Option < i64 > */
	"end_block" bigint /* Option < i64 > */
) RETURNS TABLE (
	"scanned" bigint,  /* i64 */
	"updated" bigint,  /* i64 */
	"already_current" bigint,  /* i64 */
	"empty" bigint,  /* i64 */
	"opened_by" bigint[],  /* Vec < i64 > */
	"old_key_fingerprints" TEXT[]  /* Vec < String > */
)
VOLATILE SECURITY INVOKER PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_credential_reencrypt_blocks_keys_wrapper';

-- credential_rotate::rotate::credential_key_census
CREATE  FUNCTION "credential_key_census"(
	"keys" TEXT[], /* :: std :: option :: Option < Array < '_, & '_ str > > */
	"target_table" text DEFAULT 'credential_profiles', /* Option < DbText > */
	"secret_column" text DEFAULT 'secret' /* Option < DbText > */
) RETURNS TABLE (
	"key_fingerprint" TEXT,  /* Option < String > */
	"status" TEXT,  /* String */
	"rows" bigint  /* i64 */
)
VOLATILE SECURITY INVOKER PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'credential_key_census_wrapper';

-- credential_rotate::rotate::credential_reencrypt
CREATE  FUNCTION "credential_reencrypt"(
	"old_keys" TEXT[], /* :: std :: option :: Option < Array < '_, & '_ str > > */
	"new_key" TEXT, /* Option < & str > */
	"target_table" text DEFAULT 'credential_profiles', /* Option < DbText > */
	"secret_column" text DEFAULT 'secret', /* Option < DbText > */
	"dry_run" bool DEFAULT false, /* Option < bool > */
	"touch_updated_at" bool DEFAULT false /* Option < bool > */
) RETURNS TABLE (
	"scanned" bigint,  /* i64 */
	"updated" bigint,  /* i64 */
	"already_current" bigint,  /* i64 */
	"empty" bigint  /* i64 */
)
VOLATILE SECURITY INVOKER PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'credential_reencrypt_keys_wrapper';

-- credential_rotate::functions::credential_reencrypt_value
CREATE  FUNCTION "credential_reencrypt_value"(
	"envelope" jsonb, /* Option < RawJsonb > */
	"old_keys" TEXT[], /* :: std :: option :: Option < Array < '_, & '_ str > > */
	"new_key" TEXT /* Option < & str > */
) RETURNS jsonb /* Option < RawJsonb > */
VOLATILE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'credential_reencrypt_value_jsonb_keys_wrapper';

-- credential_rotate::functions::credential_reencrypt_value
CREATE  FUNCTION "credential_reencrypt_value"(
	"envelope" text, /* Option < DbText > */
	"old_keys" TEXT[], /* :: std :: option :: Option < Array < '_, & '_ str > > */
	"new_key" TEXT /* Option < & str > */
) RETURNS text /* Option < DbText > */
VOLATILE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'credential_reencrypt_value_text_keys_wrapper';

-- What sql/several_keys.sql adds to a fresh install, statement for statement.
-- How many rows each old key opened, by fingerprint ({"<fingerprint>": rows, ...}); NULL
-- for rotations recorded before 0.3.0. Added by ALTER TABLE in both paths, so that a fresh
-- install and an upgraded one number the columns alike.
ALTER TABLE @extschema@.credential_rotate_audit ADD COLUMN rows_by_old_key jsonb;
COMMENT ON COLUMN @extschema@.credential_rotate_audit.rows_by_old_key IS
    'Rows each old key opened, by key fingerprint; NULL for rotations recorded before 0.3.0';

-- credential_reencrypt_batched from any of several old keys: as the one-key procedure, whose
-- comments apply; its final NOTICE also gives the rows each old key opened, by fingerprint.
CREATE PROCEDURE @extschema@.credential_reencrypt_batched(
    old_keys text[],
    new_key text,
    batch_rows integer DEFAULT 50000,
    target_table text DEFAULT 'credential_profiles',
    secret_column text DEFAULT 'secret'
)
LANGUAGE plpgsql
AS $$
DECLARE
    rel regclass;
    blocks bigint;
    rows_per_block bigint;
    sample bigint;
    step bigint;
    first_block bigint := 0;
    batch integer := 0;
    r record;
    total_updated bigint := 0;
    opened bigint[];
    by_key text;
BEGIN
    PERFORM @extschema@._credential_check_keys(old_keys, new_key);
    IF batch_rows IS NULL OR batch_rows < 1 THEN
        RAISE EXCEPTION 'batch_rows must be a positive number of rows' USING ERRCODE = '22023';
    END IF;
    rel := pg_catalog.to_regclass(target_table);
    blocks := coalesce(pg_catalog.pg_relation_size(rel)
                       / pg_catalog.current_setting('block_size')::pg_catalog.int8, 0);
    SELECT CASE WHEN c.reltuples >= 0 AND c.relpages > 0
                THEN pg_catalog.round(c.reltuples::pg_catalog.float8 / c.relpages::pg_catalog.float8)::pg_catalog.int8
           END
      INTO rows_per_block
      FROM pg_catalog.pg_class c WHERE c.oid = rel;
    IF rows_per_block IS NULL AND blocks > 0 THEN
        sample := least(blocks, 64);
        EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s WHERE ctid < $1', rel)
           INTO rows_per_block USING pg_catalog.format('(%s,0)', sample)::pg_catalog.tid;
        rows_per_block := (rows_per_block + sample - 1) / sample;
    END IF;
    step := greatest(1, batch_rows::pg_catalog.int8 / greatest(coalesce(rows_per_block, 1), 1));
    WHILE first_block < blocks LOOP
        SELECT * INTO r FROM @extschema@._credential_reencrypt_blocks(
            old_keys, new_key, target_table, secret_column, first_block, first_block + step);
        COMMIT;
        batch := batch + 1;
        total_updated := total_updated + r.updated;
        opened := ARRAY(SELECT coalesce(a, 0) + b
                          FROM ROWS FROM (pg_catalog.unnest(opened), pg_catalog.unnest(r.opened_by))
                               WITH ORDINALITY AS x(a, b, i)
                         ORDER BY i);
        RAISE NOTICE 'credential_reencrypt_batched: batch % (blocks % to % of %): % re-sealed, % already current, % empty',
            batch, first_block, least(first_block + step, blocks) - 1, blocks, r.updated, r.already_current, r.empty;
        first_block := first_block + step;
    END LOOP;
    SELECT * INTO r FROM @extschema@._credential_reencrypt_blocks(
        old_keys, new_key, target_table, secret_column, NULL, NULL);
    COMMIT;
    SELECT pg_catalog.string_agg((coalesce(a, 0) + b) || ' with old key ' || f, ', ' ORDER BY i)
      INTO by_key
      FROM ROWS FROM (pg_catalog.unnest(opened), pg_catalog.unnest(r.opened_by),
                     pg_catalog.unnest(r.old_key_fingerprints)) WITH ORDINALITY AS x(a, b, f, i);
    RAISE NOTICE 'credential_reencrypt_batched: final pass over % rows: % re-sealed, % already current, % empty; % re-sealed in all, opened %',
        r.scanned, r.updated, r.already_current, r.empty, total_updated + r.updated, by_key;
END
$$;

COMMENT ON FUNCTION @extschema@.credential_reencrypt(text[], text, text, text, boolean, boolean) IS
    'Re-encrypts every secret of the column that opens with any of old_keys to new_key, in place, in the caller''s transaction; returns scanned, updated, already_current, empty';
COMMENT ON PROCEDURE @extschema@.credential_reencrypt_batched(text[], text, integer, text, text) IS
    'As credential_reencrypt_batched(text, ...) from any of several old keys; its final NOTICE gives the rows each old key opened';
COMMENT ON FUNCTION @extschema@.credential_reencrypt_value(jsonb, text[], text) IS
    'One envelope re-sealed from whichever of old_keys opens it to new_key (unchanged when already current or {}), for a caller''s own UPDATE';
COMMENT ON FUNCTION @extschema@.credential_reencrypt_value(text, text[], text) IS
    'One envelope re-sealed from whichever of old_keys opens it to new_key (unchanged when already current or {}), for a caller''s own UPDATE';
COMMENT ON FUNCTION @extschema@.credential_key_census(text[], text, text) IS
    'Counts the secrets of the column that open with each of keys, then not_readable, empty, malformed, in one scan; changes nothing';
COMMENT ON FUNCTION @extschema@._credential_check_keys(text[], text) IS
    'Internal to credential_reencrypt_batched: checks old_keys and new_key before the first batch';
COMMENT ON FUNCTION @extschema@._credential_reencrypt_blocks(text[], text, text, text, bigint, bigint) IS
    'Internal to credential_reencrypt_batched: one batch from several old keys, the rows of a range of heap blocks';
COMMENT ON FUNCTION @extschema@._credential_census_status(text) IS
    'Internal to credential_key_census: the position of the key that opens one json or text secret';
COMMENT ON FUNCTION @extschema@._credential_census_status_jsonb(jsonb) IS
    'Internal to credential_key_census: the position of the key that opens one jsonb secret';

-- What sql/finalize.sql does for the new routines in a fresh install: nothing executable by
-- PUBLIC, except the internal helpers, which do nothing on their own.
REVOKE ALL ON FUNCTION
    @extschema@.credential_reencrypt(text[], text, text, text, boolean, boolean),
    @extschema@.credential_reencrypt_value(jsonb, text[], text),
    @extschema@.credential_reencrypt_value(text, text[], text),
    @extschema@.credential_key_census(text[], text, text),
    @extschema@._credential_check_keys(text[], text),
    @extschema@._credential_reencrypt_blocks(text[], text, text, text, bigint, bigint),
    @extschema@._credential_census_status(text),
    @extschema@._credential_census_status_jsonb(jsonb)
  FROM PUBLIC;
REVOKE ALL ON PROCEDURE
    @extschema@.credential_reencrypt_batched(text[], text, integer, text, text)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    @extschema@._credential_check_keys(text[], text),
    @extschema@._credential_reencrypt_blocks(text[], text, text, text, bigint, bigint),
    @extschema@._credential_census_status(text),
    @extschema@._credential_census_status_jsonb(jsonb)
  TO PUBLIC;
