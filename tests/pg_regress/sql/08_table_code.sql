-- Code attached to the table runs inside a rotation's UPDATE and can read the statement that
-- carries the keys. The application's role owns its table; here it plants a trigger that
-- records every statement, and waits for the DBA's next rotation.
\set old_key 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q='
\set new_key 'PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc='
BEGIN;
CREATE ROLE freeboard_app NOLOGIN;
GRANT CREATE ON SCHEMA public TO freeboard_app;
CREATE TABLE app_profiles (LIKE credential_profiles INCLUDING ALL);
INSERT INTO app_profiles (id, name, secret)
  SELECT 'cp-' || i, 'profile ' || i, credential_encrypt(format('{"token":"t%s"}', i), :'old_key')
    FROM generate_series(1, 3) i;
CREATE TABLE captured (q text);
GRANT INSERT ON captured TO PUBLIC;
ALTER TABLE app_profiles OWNER TO freeboard_app;
SET ROLE freeboard_app;
CREATE FUNCTION record_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO captured VALUES (current_query()); RETURN NEW; END $$;
CREATE TRIGGER record BEFORE UPDATE ON app_profiles FOR EACH ROW EXECUTE FUNCTION record_statement();
RESET ROLE;
-- The DBA's rotation, as the README shows it: refused, naming the trigger and its owner.
SAVEPOINT planted;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'app_profiles');
ROLLBACK TO planted;
SELECT count(*) AS statements_recorded FROM captured;
-- A dry run and a verification run no table code.
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'app_profiles', dry_run => true);
SELECT * FROM credential_verify(:'old_key', 'app_profiles');
SELECT count(*) AS statements_recorded FROM captured;
-- What the refusal prevents: accepting the code lets it read both keys.
SET LOCAL credential_rotate.trust_table_code = on;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'app_profiles');
SELECT count(*) AS statements_recorded,
       count(*) FILTER (WHERE q LIKE '%' || :'old_key' || '%' AND q LIKE '%' || :'new_key' || '%') AS holding_both_keys
  FROM captured;
RESET credential_rotate.trust_table_code;
-- The application's role cannot accept its own code on the DBA's behalf.
SET ROLE freeboard_app;
SAVEPOINT not_superuser;
SET credential_rotate.trust_table_code = on;
ROLLBACK TO not_superuser;
RESET ROLE;
ROLLBACK;
