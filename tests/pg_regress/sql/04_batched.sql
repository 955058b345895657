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
DELETE FROM credential_profiles;
DELETE FROM credential_rotate_audit;
