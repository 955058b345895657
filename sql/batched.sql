-- Rotation in batches for very large tables: each batch is a short transaction that commits,
-- so no lock is held for long. While it runs the table holds rows under both keys; the
-- application can read all of them only once the last batch has committed (or if it knows
-- both keys). Idempotent: call it again after an interruption and it carries on, finding the
-- finished rows already current. It ends with one atomic pass over the whole table, which
-- picks up rows the application wrote with the old key meanwhile, or that moved behind the
-- batch front, and leaves the table fully rotated; that pass holds the table lock for a scan
-- of the whole table (writing only the stragglers). CALL it outside a transaction block.
CREATE PROCEDURE credential_reencrypt_batched(
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
