-- Functions run as the caller: a rotation role needs EXECUTE and the table privileges an
-- UPDATE of the column needs. CREATE ROLE is transactional, so the whole file rolls back.
\set old_key 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q='
\set new_key 'PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc='
BEGIN;
INSERT INTO credential_profiles (id, name, secret)
  SELECT 'cp-' || i, 'profile ' || i, credential_encrypt(format('{"token":"t%s"}', i), :'old_key')
    FROM generate_series(1, 3) i;
CREATE TEMP TABLE snapshot AS SELECT md5(string_agg(secret::text, ',' ORDER BY id)) AS h FROM credential_profiles;
GRANT SELECT ON snapshot TO PUBLIC;
CREATE ROLE rotator NOLOGIN;
-- No grant at all: refused.
SET ROLE rotator;
SAVEPOINT no_grant;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO no_grant;
SELECT credential_generate_key();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO no_grant;
RESET ROLE;
-- EXECUTE, as the README grants it, but no privilege on the table: refused.
GRANT EXECUTE ON FUNCTION
    credential_reencrypt(text, text, text, text, boolean, boolean),
    credential_verify(text, text, text),
    credential_verify_rows(text, text, text),
    credential_key_fingerprint(text),
    _credential_reencrypt_row(oid, tid, text),
    _credential_reencrypt_take(tid),
    _credential_reencrypt_row_jsonb(oid, tid, jsonb),
    _credential_reencrypt_take_jsonb(tid, jsonb),
    _credential_reencrypt_blocks(text, text, text, text, bigint, bigint),
    _credential_status(text),
    _credential_status_jsonb(jsonb),
    _credential_check_keys(text, text),
    _credential_audit_append()
  TO rotator;
SET ROLE rotator;
SAVEPOINT no_table_privilege;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO no_table_privilege;
RESET ROLE;
-- Reading is enough to verify; rewriting needs UPDATE too, and nothing changes without it.
GRANT SELECT ON credential_profiles TO rotator;
SET ROLE rotator;
SELECT * FROM credential_verify(:'old_key');
SAVEPOINT no_update;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO no_update;
SELECT md5(string_agg(secret::text, ',' ORDER BY id)) = (SELECT h FROM snapshot) AS unchanged FROM credential_profiles;
RESET ROLE;
-- With UPDATE on the table (LOCK TABLE needs it at table level), the rotation goes through.
GRANT UPDATE ON credential_profiles TO rotator;
SET ROLE rotator;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key');
SELECT * FROM credential_verify(:'new_key');
-- The audit trail records who rotated, with fingerprints; the rotator may append, not read.
SAVEPOINT audit;
SELECT count(*) FROM credential_rotate_audit;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO audit;
RESET ROLE;
SELECT rotated_by, session_role, target_table, updated, old_key_fingerprint, new_key_fingerprint
  FROM credential_rotate_audit;
ROLLBACK;
