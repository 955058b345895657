-- Every bad input gets a clear error with a standard SQLSTATE, and nothing changes.
\set old_key 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q='
\set new_key 'PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc='
\set SHOW_CONTEXT never
BEGIN;
INSERT INTO credential_profiles (id, name, secret)
  SELECT 'cp-' || i, 'profile ' || i, credential_encrypt(format('{"token":"t%s"}', i), :'old_key')
    FROM generate_series(1, 9) i;
CREATE TEMP TABLE snapshot AS
  SELECT md5(string_agg(id || secret::text, ',' ORDER BY id)) AS h FROM credential_profiles;
CREATE FUNCTION pg_temp.unchanged() RETURNS boolean LANGUAGE sql AS $$
  SELECT md5(string_agg(id || secret::text, ',' ORDER BY id)) = (SELECT h FROM snapshot)
    FROM credential_profiles $$;
-- Keys: NULL, empty, not base64, wrong length, the same key twice. The value is never echoed.
SAVEPOINT s;
SELECT * FROM credential_reencrypt(NULL, :'new_key');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(:'old_key', '');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_reencrypt('correct horse battery staple', :'new_key');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(:'old_key', 'c2hvcnQ=');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(:'old_key', :'old_key');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- Table and column: missing, or of the wrong type.
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'credential_profile');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'credential_profiles', 'secrets');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'credential_profiles', 'allow_public_use');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- A key passed where the table name goes is not echoed back.
SELECT * FROM credential_verify(:'old_key', :'new_key');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- A row in the middle that opens with neither key: the call names it, nothing changes.
UPDATE credential_profiles SET secret = credential_encrypt('{"token":"x"}'::text, credential_generate_key())
 WHERE id = 'cp-5';
UPDATE snapshot SET h = (SELECT md5(string_agg(id || secret::text, ',' ORDER BY id)) FROM credential_profiles);
SAVEPOINT bad_row;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO bad_row;
SELECT pg_temp.unchanged();
SELECT * FROM credential_verify_rows(:'old_key');
-- Each malformed envelope the application could never have written, in the same row.
CREATE TEMP TABLE malformed (why text, envelope jsonb);
INSERT INTO malformed VALUES
  ('tag altered', '{"algorithm":"aes-256-gcm","keyId":"v1","iv":"3wnmp5so0gw8em4e","ciphertext":"yHMHGxFKaPwSrNHkeL9hRBid","authTag":"iIrlQKd8DF3LXvd1KAimnA=="}'),
  ('missing iv', '{"algorithm":"aes-256-gcm","keyId":"v1","ciphertext":"yHMHGxFKaPwSrNHkeL9hRBid","authTag":"iYrlQKd8DF3LXvd1KAimnA=="}'),
  ('missing authTag', '{"algorithm":"aes-256-gcm","keyId":"v1","iv":"3wnmp5so0gw8em4e","ciphertext":"yHMHGxFKaPwSrNHkeL9hRBid"}'),
  ('iv not base64', '{"algorithm":"aes-256-gcm","keyId":"v1","iv":"!!!not-base64!!!","ciphertext":"yHMHGxFKaPwSrNHkeL9hRBid","authTag":"iYrlQKd8DF3LXvd1KAimnA=="}'),
  ('iv wrong length', '{"algorithm":"aes-256-gcm","keyId":"v1","iv":"W74r6tdtDHs6SXxaEhejUQ==","ciphertext":"yHMHGxFKaPwSrNHkeL9hRBid","authTag":"iYrlQKd8DF3LXvd1KAimnA=="}'),
  ('tag truncated', '{"algorithm":"aes-256-gcm","keyId":"v1","iv":"3wnmp5so0gw8em4e","ciphertext":"yHMHGxFKaPwSrNHkeL9hRBid","authTag":"iYrlQKd8DF0="}'),
  ('unknown algorithm', '{"algorithm":"aes-128-cbc","keyId":"v1","iv":"3wnmp5so0gw8em4e","ciphertext":"yHMHGxFKaPwSrNHkeL9hRBid","authTag":"iYrlQKd8DF3LXvd1KAimnA=="}'),
  ('fields not strings', '{"algorithm":"aes-256-gcm","keyId":"v1","iv":12345,"ciphertext":"yHMHGxFKaPwSrNHkeL9hRBid","authTag":"iYrlQKd8DF3LXvd1KAimnA=="}'),
  ('not an object', '["aes-256-gcm"]'),
  ('a JSON string', '"aes-256-gcm"');
CREATE FUNCTION pg_temp.try_rotation(envelope jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  UPDATE credential_profiles SET secret = envelope WHERE id = 'cp-5';
  PERFORM credential_reencrypt('y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q=',
                               'PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc=');
  RETURN 'rotated?!';
EXCEPTION WHEN others THEN
  RETURN SQLSTATE || ' ' || SQLERRM;
END $$;
SELECT why, pg_temp.try_rotation(envelope) AS error FROM malformed ORDER BY why;
SELECT pg_temp.unchanged();
ROLLBACK;
-- Under REPEATABLE READ the snapshot would predate the table lock: refused (a dry run is fine).
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', dry_run => true);
ROLLBACK;
-- Functions are refused outside the calls that drive them; the audit trail cannot be forged.
SELECT credential_rotate._credential_audit_append();
\echo :LAST_ERROR_SQLSTATE
SELECT credential_rotate._credential_reencrypt_take('(0,1)');
\echo :LAST_ERROR_SQLSTATE
