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
-- EXECUTE, as docs/security.md grants it, but no privilege on the table: refused.
GRANT EXECUTE ON FUNCTION
    credential_reencrypt(text, text, text, text, boolean, boolean),
    credential_verify(text, text, text),
    credential_verify_rows(text, text, text),
    credential_key_fingerprint(text)
  TO rotator;
GRANT EXECUTE ON PROCEDURE credential_reencrypt_batched(text, text, integer, text, text)
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
-- Row-level security: a policy that shows the rotator only some rows would make a rotation
-- skip the others silently. It is refused instead, naming the table; nothing changes.
INSERT INTO credential_profiles (id, name, secret)
  SELECT 'cp-' || i, 'profile ' || i, credential_encrypt(format('{"token":"t%s"}', i), :'new_key')
    FROM generate_series(4, 6) i;
ALTER TABLE credential_profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY first_three ON credential_profiles USING (id <= 'cp-3');
UPDATE snapshot SET h = (SELECT md5(string_agg(secret::text, ',' ORDER BY id)) FROM credential_profiles);
SET ROLE rotator;
SELECT count(*) AS rows_the_rotator_sees FROM credential_profiles;
SAVEPOINT rls;
SELECT * FROM credential_reencrypt(:'new_key', :'old_key');
ROLLBACK TO rls;
SELECT * FROM credential_reencrypt(:'new_key', :'old_key', dry_run => true);
ROLLBACK TO rls;
SELECT * FROM credential_verify(:'new_key');
ROLLBACK TO rls;
SELECT * FROM credential_verify_rows(:'new_key');
ROLLBACK TO rls;
RESET ROLE;
SELECT md5(string_agg(secret::text, ',' ORDER BY id)) = (SELECT h FROM snapshot) AS unchanged FROM credential_profiles;
-- A role with BYPASSRLS sees every row, and so the rotation goes through.
ALTER ROLE rotator BYPASSRLS;
SET ROLE rotator;
SELECT * FROM credential_reencrypt(:'new_key', :'old_key');
RESET ROLE;
-- The table owner is exempt from its own policies, unless the table forces them.
ALTER TABLE credential_profiles FORCE ROW LEVEL SECURITY;
CREATE ROLE app_owner NOLOGIN;
GRANT EXECUTE ON FUNCTION credential_verify(text, text, text) TO app_owner;
ALTER TABLE credential_profiles OWNER TO app_owner;
SET ROLE app_owner;
SAVEPOINT forced;
SELECT * FROM credential_verify(:'old_key');
ROLLBACK TO forced;
RESET ROLE;
-- A superuser always sees every row.
SELECT * FROM credential_verify(:'old_key');
ROLLBACK;
