-- Several old keys in one call (0.3.0): the catalog objects the library cannot declare itself.
--
-- Included in a fresh install by src/lib.rs and copied, statement for statement, into
-- sql/credential_rotate--0.2.0--0.3.0.sql: tests/upgrade.sh requires both paths to give the
-- same catalog.

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
