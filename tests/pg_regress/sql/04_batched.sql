-- Very large tables: rotate in batches that each commit. CALL runs outside a transaction
-- block, so this file cleans up after itself instead of rolling back.
\set old_key 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q='
\set new_key 'PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc='
INSERT INTO credential_profiles (id, name, secret)
  SELECT 'b-' || lpad(i::text, 5, '0'), 'batch ' || i,
         CASE WHEN i % 100 = 0 THEN '{}'::jsonb
              ELSE credential_encrypt(format('{"token":"t%s"}', i), :'old_key') END
    FROM generate_series(1, 3000) i;
VACUUM ANALYZE credential_profiles;
CREATE TEMP TABLE plain AS SELECT id, credential_decrypt(secret, :'old_key') AS p FROM credential_profiles;
-- Batches of 1000 rows, counted under the lock; each NOTICE says what its batch held.
CALL credential_reencrypt_batched(:'old_key', :'new_key', batch_rows => 1000);
SELECT * FROM credential_verify(:'new_key');
SELECT count(*) AS same_plaintext FROM credential_profiles c JOIN plain USING (id)
 WHERE credential_decrypt(c.secret, :'new_key') IS NOT DISTINCT FROM plain.p;
-- Each batch committed and left its own audit row, plus one for the final pass.
SELECT count(*) AS audit_rows, sum(updated) AS re_sealed FROM credential_rotate_audit
 WHERE target_table = 'public.credential_profiles';
-- Interrupted half-way (here: one batch's worth rotated back by hand), calling it again
-- carries on and finishes: idempotent and resumable.
UPDATE credential_profiles SET secret = credential_reencrypt_value(secret, :'new_key', :'old_key')
 WHERE id < 'b-01500';
SET client_min_messages = warning;
CALL credential_reencrypt_batched(:'old_key', :'new_key', batch_rows => 700);
RESET client_min_messages;
SELECT * FROM credential_verify(:'new_key');
-- Not inside a transaction block: CALL must be able to COMMIT. Refused before it reads a
-- row: the transaction's statistics show no scan of the table.
BEGIN;
SELECT seq_tup_read AS read_before, n_tup_upd AS updated_before FROM pg_stat_xact_user_tables
 WHERE relid = 'credential_profiles'::regclass \gset
SAVEPOINT before_call;
CALL credential_reencrypt_batched(:'new_key', :'old_key');
ROLLBACK TO before_call;
SELECT seq_tup_read - :read_before AS rows_read, n_tup_upd - :updated_before AS rows_updated
  FROM pg_stat_xact_user_tables WHERE relid = 'credential_profiles'::regclass;
ROLLBACK;
CALL credential_reencrypt_batched(:'old_key', :'new_key', batch_rows => 0);
DELETE FROM credential_profiles;
DELETE FROM credential_rotate_audit;

-- Batches hold at most batch_rows rows whatever the planner statistics say. The largest
-- batch of each call, from its audit rows (the last is the final pass).
CREATE FUNCTION pg_temp.batches() RETURNS TABLE (batches bigint, largest_batch bigint)
LANGUAGE sql AS $$
  SELECT count(*), max(scanned) FROM credential_rotate_audit
   WHERE target_table = 'public.stats'
     AND id < (SELECT max(id) FROM credential_rotate_audit WHERE target_table = 'public.stats')
$$;
CREATE TABLE stats (LIKE credential_profiles INCLUDING ALL) WITH (autovacuum_enabled = off);
-- Never vacuumed or analysed: no statistics (reltuples = -1).
INSERT INTO stats (id, name, secret)
  SELECT 's-' || lpad(i::text, 5, '0'), 'stats ' || i, credential_encrypt(format('{"token":"t%s"}', i), :'old_key')
    FROM generate_series(1, 3000) i;
SELECT reltuples FROM pg_class WHERE oid = 'stats'::regclass;
CALL credential_reencrypt_batched(:'old_key', :'new_key', batch_rows => 500, target_table => 'stats');
SELECT * FROM pg_temp.batches();
DELETE FROM credential_rotate_audit;
-- reltuples = 0, as a VACUUM that ran while a bulk load was still uncommitted leaves it.
UPDATE pg_class SET reltuples = 0 WHERE oid = 'stats'::regclass;
CALL credential_reencrypt_batched(:'new_key', :'old_key', batch_rows => 500, target_table => 'stats');
SELECT * FROM pg_temp.batches();
DELETE FROM credential_rotate_audit;
-- Bloated by three whole-table rotations, then analysed: the live rows are all at the end of
-- the heap, behind blocks of dead ones.
SELECT scanned FROM credential_reencrypt(:'old_key', :'new_key', 'stats');
SELECT scanned FROM credential_reencrypt(:'new_key', :'old_key', 'stats');
SELECT scanned FROM credential_reencrypt(:'old_key', :'new_key', 'stats');
ANALYZE stats;
DELETE FROM credential_rotate_audit;
CALL credential_reencrypt_batched(:'new_key', :'old_key', batch_rows => 500, target_table => 'stats');
SELECT * FROM pg_temp.batches();
SELECT * FROM credential_verify(:'old_key', 'stats');
DROP TABLE stats;
DELETE FROM credential_rotate_audit;
