-- A DBA's rotation, start to finish. Keys come from the secret store; here, two test keys.
-- This file is UTF-8 (pg_regress sets the client encoding to the database's, LATIN1 or
-- SQL_ASCII in some runs): say so, so that its literals and the output read the same in all.
SET client_encoding = 'UTF8';
\set old_key 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q='
\set new_key 'PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc='
BEGIN;
-- Seed Freeboard-shaped rows as the application writes them, and one with no secret.
INSERT INTO credential_profiles (id, name, type, secret) VALUES
  ('cp-1', 'warehouse', 'basic',
   credential_encrypt('{"username":"svc-reader","password":"pässword"}'::text, :'old_key')),
  ('cp-2', 'metrics-api', 'bearer', credential_encrypt('{"token":"abc123"}'::text, :'old_key')),
  ('cp-3', 'partner-feed', 'header',
   credential_encrypt('{"headerName":"X-API-Key","headerValue":"k-1"}'::text, :'old_key')),
  ('cp-4', 'empty-secret', 'bearer', credential_encrypt('{}'::text, :'old_key'));
INSERT INTO credential_profiles (id, name) VALUES ('cp-5', 'public-source');
-- Fingerprints identify the keys in a change ticket without revealing them.
SELECT credential_key_fingerprint(:'old_key') AS old_fp, credential_key_fingerprint(:'new_key') AS new_fp;
-- Before: everything opens with the current key.
SELECT * FROM credential_verify(:'old_key');
-- What a rotation would do, without writing.
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', dry_run => true);
CREATE TEMP TABLE before_rotation AS
  SELECT id, secret, credential_decrypt(secret, :'old_key') AS plaintext FROM credential_profiles;
-- Rotate.
SELECT * FROM credential_reencrypt(:'old_key', :'new_key');
-- After: every secret opens with the new key to the same plaintext, none with the old one.
SELECT * FROM credential_verify(:'new_key');
SELECT * FROM credential_verify(:'old_key');
SELECT id, credential_decrypt(c.secret, :'new_key') = b.plaintext AS same_plaintext,
       c.secret->>'iv' <> b.secret->>'iv' AS fresh_iv,
       c.secret->>'keyId' AS key_id
  FROM credential_profiles c JOIN before_rotation b USING (id)
 WHERE c.secret <> '{}'
 ORDER BY id;
SELECT id, credential_decrypt(secret, :'new_key') FROM credential_profiles ORDER BY id;
-- Running it again changes nothing.
SELECT * FROM credential_reencrypt(:'old_key', :'new_key');
-- Rolling the rotation back is the same call with the keys swapped.
SELECT * FROM credential_reencrypt(:'new_key', :'old_key');
SELECT count(*) AS open_with_old_key FROM credential_profiles
 WHERE credential_decrypt(secret, :'old_key') IS NOT NULL;
-- Each committed call leaves an audit row, in the same transaction: fingerprints, no keys.
SELECT rotated_by, target_table, secret_column, scanned, updated, already_current, empty,
       old_key_fingerprint, new_key_fingerprint
  FROM credential_rotate_audit ORDER BY id;
ROLLBACK;
SELECT count(*) AS audit_rows_after_rollback FROM credential_rotate_audit;
-- A ROLLBACK after a successful call restores the old envelopes exactly.
INSERT INTO credential_profiles (id, name, secret)
  SELECT 'r-' || i, 'r ' || i, credential_encrypt(format('{"token":"t%s"}', i), :'old_key')
    FROM generate_series(1, 5) i;
CREATE TEMP TABLE snapshot AS SELECT md5(string_agg(secret::text, ',' ORDER BY id)) AS h FROM credential_profiles;
BEGIN;
-- Progress NOTICEs for large tables; here every 2 rows to show them (rate in the DETAIL).
SET LOCAL credential_rotate.progress_rows = 2;
\set VERBOSITY terse
SELECT * FROM credential_reencrypt(:'old_key', :'new_key');
\set VERBOSITY default
SELECT md5(string_agg(secret::text, ',' ORDER BY id)) = (SELECT h FROM snapshot) AS unchanged FROM credential_profiles;
ROLLBACK;
SELECT md5(string_agg(secret::text, ',' ORDER BY id)) = (SELECT h FROM snapshot) AS unchanged FROM credential_profiles;
SELECT * FROM credential_verify(:'old_key');
DELETE FROM credential_profiles;
