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
-- Batches of about 1000 rows; the per-batch NOTICEs depend on the page layout, so they are
-- silenced here and the outcome checked instead.
SET client_min_messages = warning;
CALL credential_reencrypt_batched(:'old_key', :'new_key', batch_rows => 1000);
RESET client_min_messages;
SELECT * FROM credential_verify(:'new_key');
SELECT count(*) AS same_plaintext FROM credential_profiles c JOIN plain USING (id)
 WHERE credential_decrypt(c.secret, :'new_key') IS NOT DISTINCT FROM plain.p;
-- Each batch committed and left its own audit row, plus one for the final pass.
SELECT count(*) > 2 AS several_batches, sum(updated) AS re_sealed FROM credential_rotate_audit
 WHERE target_table = 'public.credential_profiles';
-- Interrupted half-way (here: one batch's worth rotated back by hand), calling it again
-- carries on and finishes: idempotent and resumable.
UPDATE credential_profiles SET secret = credential_reencrypt_value(secret, :'new_key', :'old_key')
 WHERE id < 'b-01500';
SET client_min_messages = warning;
CALL credential_reencrypt_batched(:'old_key', :'new_key', batch_rows => 700);
RESET client_min_messages;
SELECT * FROM credential_verify(:'new_key');
-- Not inside a transaction block: CALL must be able to COMMIT.
BEGIN;
CALL credential_reencrypt_batched(:'old_key', :'new_key');
ROLLBACK;
CALL credential_reencrypt_batched(:'old_key', :'new_key', batch_rows => 0);
-- A table never vacuumed or analysed has no statistics (reltuples = -1): the batches are
-- sized from a count of its first blocks instead, so batch_rows still holds.
CREATE TABLE never_analysed (LIKE credential_profiles INCLUDING ALL) WITH (autovacuum_enabled = off);
INSERT INTO never_analysed (id, name, secret)
  SELECT 'n-' || lpad(i::text, 5, '0'), 'never ' || i, credential_encrypt(format('{"token":"t%s"}', i), :'old_key')
    FROM generate_series(1, 3000) i;
SELECT reltuples FROM pg_class WHERE oid = 'never_analysed'::regclass;
SET client_min_messages = warning;
CALL credential_reencrypt_batched(:'old_key', :'new_key', batch_rows => 500, target_table => 'never_analysed');
RESET client_min_messages;
-- About six batches of 500 rows, each with its audit row, then the final pass.
SELECT count(*) BETWEEN 5 AND 9 AS batches_of_about_500_rows, max(updated) <= 600 AS no_batch_much_larger
  FROM credential_rotate_audit WHERE target_table = 'public.never_analysed' AND updated > 0;
SELECT * FROM credential_verify(:'new_key', 'never_analysed');
DROP TABLE never_analysed;
DELETE FROM credential_profiles;
DELETE FROM credential_rotate_audit;
