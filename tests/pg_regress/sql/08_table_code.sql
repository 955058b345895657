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
BEGIN INSERT INTO public.captured VALUES (pg_catalog.current_query()); RETURN NEW; END $$;
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
-- Accepted, the code runs with the caller's rights; what it reads of the statement has the
-- keys masked.
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

-- Every route Postgres has to run code during the rotation's UPDATE, each planted by mallory
-- on a table she owns, the DBA (a superuser) rotating: refused before a row is written, her
-- code never run, she no superuser.
BEGIN;
CREATE ROLE mallory NOLOGIN;
CREATE SCHEMA mallory AUTHORIZATION mallory;
GRANT CREATE ON SCHEMA public TO mallory;
CREATE TABLE mallory_log (what text, query text);
GRANT INSERT ON mallory_log TO PUBLIC;
-- Her tables, with the DBA's rows in them before she plants anything.
CREATE TABLE m_check (LIKE credential_profiles INCLUDING ALL);
CREATE TABLE m_when (LIKE credential_profiles INCLUDING ALL);
CREATE TABLE m_range (LIKE credential_profiles INCLUDING ALL);
CREATE TABLE m_parts (id text, secret jsonb, PRIMARY KEY (id, secret)) PARTITION BY HASH (secret);
CREATE TABLE m_parts_0 PARTITION OF m_parts FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE m_parts_1 PARTITION OF m_parts FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE m_fk (LIKE credential_profiles INCLUDING ALL, UNIQUE (secret));
CREATE TABLE m_fk_copy (secret jsonb);
INSERT INTO m_check (id, name, secret) SELECT 'c-' || i, 'n' || i, credential_encrypt('{"t":1}', :'old_key') FROM generate_series(1, 3) i;
INSERT INTO m_when (id, name, secret) SELECT 'w-' || i, 'n' || i, credential_encrypt('{"t":1}', :'old_key') FROM generate_series(1, 3) i;
INSERT INTO m_range (id, name, secret) SELECT 'r-' || i, 'n' || i, credential_encrypt('{"t":1}', :'old_key') FROM generate_series(1, 3) i;
INSERT INTO m_parts SELECT 'p-' || i, credential_encrypt('{"t":1}', :'old_key') FROM generate_series(1, 6) i;
INSERT INTO m_fk (id, name, secret) SELECT 'f-' || i, 'n' || i, credential_encrypt('{"t":1}', :'old_key') FROM generate_series(1, 3) i;
INSERT INTO m_fk_copy SELECT secret FROM m_fk;
ALTER TABLE m_check OWNER TO mallory;
ALTER TABLE m_when OWNER TO mallory;
ALTER TABLE m_range OWNER TO mallory;
ALTER TABLE m_parts OWNER TO mallory;
ALTER TABLE m_parts_0 OWNER TO mallory;
ALTER TABLE m_parts_1 OWNER TO mallory;
ALTER TABLE m_fk OWNER TO mallory;
ALTER TABLE m_fk_copy OWNER TO mallory;
SET ROLE mallory;
CREATE FUNCTION mallory.steal(what text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.mallory_log VALUES (what, pg_catalog.current_query());
  BEGIN
    EXECUTE 'ALTER ROLE mallory SUPERUSER';
  EXCEPTION WHEN OTHERS THEN NULL;
  END;
  RETURN true;
END $$;
CREATE FUNCTION mallory.steal_op(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT mallory.steal(''operator'')';
CREATE OPERATOR mallory.### (LEFTARG = text, RIGHTARG = text, FUNCTION = mallory.steal_op);
CREATE FUNCTION mallory.steal_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM mallory.steal(TG_NAME); RETURN NEW; END $$;
-- 1. An operator of hers in a CHECK constraint.
ALTER TABLE m_check ADD CHECK (id OPERATOR(mallory.###) 'x');
-- 2. An operator of hers in the WHEN of a trigger running a built-in function.
CREATE TRIGGER quiet BEFORE UPDATE ON m_when FOR EACH ROW
  WHEN (NEW.id OPERATOR(mallory.###) 'x') EXECUTE FUNCTION pg_catalog.suppress_redundant_updates_trigger();
-- 3. Partitioned by the secret: re-sealed rows move between partitions, firing INSERT triggers.
CREATE TRIGGER moved AFTER INSERT ON m_parts_0 FOR EACH ROW EXECUTE FUNCTION mallory.steal_trigger();
-- 4. A foreign key that carries a new secret into another table, whose trigger runs.
ALTER TABLE m_fk_copy ADD FOREIGN KEY (secret) REFERENCES m_fk (secret) ON UPDATE CASCADE;
CREATE TRIGGER cascaded BEFORE UPDATE ON m_fk_copy FOR EACH ROW EXECUTE FUNCTION mallory.steal_trigger();
-- 5. A primary key of her composite type, with a cast of hers to text that a statement
--    reading the key as text would call.
CREATE TYPE mallory.pid AS (v text);
CREATE FUNCTION mallory.pid_text(mallory.pid) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM mallory.steal('cast'); RETURN $1.v; END $$;
CREATE CAST (mallory.pid AS text) WITH FUNCTION mallory.pid_text(mallory.pid) AS ASSIGNMENT;
CREATE TABLE public.m_pid (id mallory.pid PRIMARY KEY, secret jsonb);
-- 6. A range type of hers, whose subtype_diff runs in a GiST index on a column of it.
CREATE FUNCTION mallory.diff(a float8, b float8) RETURNS float8 LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN PERFORM set_config('mallory.seen', pg_catalog.current_query(), false); RETURN a - b; END $$;
CREATE TYPE mallory.span AS RANGE (SUBTYPE = float8, SUBTYPE_DIFF = mallory.diff);
ALTER TABLE m_range ADD COLUMN span mallory.span;
CREATE INDEX m_range_span ON m_range USING gist (span);
-- 7. A function of hers that the DBA's own trigger calls: no catalog shows it, the call does.
CREATE FUNCTION public.helper() RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM mallory.steal('helper'); END $$;
RESET ROLE;
INSERT INTO m_pid VALUES (ROW('k-1')::mallory.pid, credential_encrypt('{"t":1}', :'old_key')),
                         (ROW('k-2')::mallory.pid, credential_encrypt('{"t":1}', :'new_key')),
                         (ROW('k-3')::mallory.pid, credential_encrypt('{"t":1}', 'gSOXcMTbQ4QXbe8SfnMBRWqVNk8BV6pS8zxaNoHN5Bk='));
CREATE FUNCTION dba_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM public.helper(); RETURN NEW; END $$;
CREATE TABLE m_helper (LIKE credential_profiles INCLUDING ALL);
INSERT INTO m_helper (id, name, secret) SELECT 'h-' || i, 'n' || i, credential_encrypt('{"t":1}', :'old_key') FROM generate_series(1, 3) i;
CREATE TRIGGER uses_helper BEFORE UPDATE ON m_helper FOR EACH ROW EXECUTE FUNCTION dba_trigger();
-- (Her CHECK ran as herself on her rows when she added it.)
TRUNCATE mallory_log;
SAVEPOINT s;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'm_check');
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'm_when');
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'm_range');
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'm_parts');
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'm_fk');
ROLLBACK TO s;
-- Her cast is never called: keys are read as text through the type's output function.
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'm_pid');
ROLLBACK TO s;
SELECT * FROM credential_verify_rows(:'old_key', 'm_pid');
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'm_helper');
ROLLBACK TO s;
SELECT count(*) AS mallory_code_ran FROM mallory_log;
SELECT current_setting('mallory.seen', true) IS NULL AS subtype_diff_saw_nothing;
SELECT rolsuper AS mallory_is_superuser FROM pg_roles WHERE rolname = 'mallory';
SELECT * FROM credential_verify(:'old_key', 'm_parts');
ROLLBACK;
