-- A rotation's counts are checked, not assumed: "updated" means the new value is what is
-- stored. The DBA's own triggers (trusted: the DBA owns them) that undo, skip or rewrite the
-- rows a rotation writes make it fail, naming the row, and change nothing. Table code runs
-- with search_path pg_catalog, pg_temp during a call, so these name their tables.
\set old_key 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q='
\set new_key 'PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc='
BEGIN;
CREATE TABLE counted (LIKE credential_profiles INCLUDING ALL);
INSERT INTO counted (id, name, secret)
  SELECT 'c-' || i, 'profile ' || i, credential_encrypt(format('{"token":"t%s"}', i), :'old_key')
    FROM generate_series(1, 6) i;
-- A BEFORE trigger that keeps the old secret: 0.3.0 reported 6 updated and rotated nothing.
CREATE FUNCTION keep_old_secret() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.secret := OLD.secret; RETURN NEW; END $$;
CREATE TRIGGER keep BEFORE UPDATE ON counted FOR EACH ROW EXECUTE FUNCTION keep_old_secret();
SAVEPOINT s;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'counted');
ROLLBACK TO s;
DROP TRIGGER keep ON counted;
-- One that skips a row.
CREATE FUNCTION skip_one() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.id = 'c-4' THEN RETURN NULL; END IF; RETURN NEW; END $$;
CREATE TRIGGER skip BEFORE UPDATE ON counted FOR EACH ROW EXECUTE FUNCTION skip_one();
SAVEPOINT s;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'counted');
ROLLBACK TO s;
DROP TRIGGER skip ON counted;
-- An AFTER trigger that writes the old secret back once the row is stored.
CREATE FUNCTION undo_after() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF pg_catalog.pg_trigger_depth() OPERATOR(pg_catalog.=) 1 THEN
    UPDATE public.counted SET secret = OLD.secret WHERE id OPERATOR(pg_catalog.=) NEW.id;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER undo AFTER UPDATE ON counted FOR EACH ROW EXECUTE FUNCTION undo_after();
SAVEPOINT s;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'counted');
ROLLBACK TO s;
DROP TRIGGER undo ON counted;
-- A deferred trigger runs at COMMIT, after any check: refused.
CREATE CONSTRAINT TRIGGER late AFTER UPDATE ON counted DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION undo_after();
SAVEPOINT s;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'counted');
ROLLBACK TO s;
DROP TRIGGER late ON counted;
-- Nothing changed.
SELECT * FROM credential_verify(:'old_key', 'counted');
-- A trigger that sets another column keeps the re-sealed value: the rotation goes through,
-- and so does one whose AFTER trigger only writes elsewhere.
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_by := 'rotation'; RETURN NEW; END $$;
CREATE TRIGGER stamp BEFORE UPDATE ON counted FOR EACH ROW EXECUTE FUNCTION stamp();
CREATE TABLE history (id text, at timestamptz);
CREATE FUNCTION remember() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.history VALUES (NEW.id, pg_catalog.now()); RETURN NULL; END $$;
CREATE TRIGGER remember AFTER UPDATE ON counted FOR EACH ROW EXECUTE FUNCTION remember();
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'counted');
SELECT * FROM credential_verify(:'new_key', 'counted');
SELECT count(*) AS stamped FROM counted WHERE updated_by = 'rotation';
SELECT count(*) AS remembered FROM history;
ROLLBACK;
-- A batch is checked the same way.
CREATE TABLE counted_batches (LIKE credential_profiles INCLUDING ALL);
INSERT INTO counted_batches (id, name, secret)
  SELECT 'c-' || i, 'profile ' || i, credential_encrypt(format('{"token":"t%s"}', i), :'old_key')
    FROM generate_series(1, 6) i;
CREATE FUNCTION keep_old_secret() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.secret := OLD.secret; RETURN NEW; END $$;
CREATE TRIGGER keep BEFORE UPDATE ON counted_batches FOR EACH ROW EXECUTE FUNCTION keep_old_secret();
SET client_min_messages = warning;
CALL credential_reencrypt_batched(:'old_key', :'new_key', batch_rows => 2, target_table => 'counted_batches');
RESET client_min_messages;
SELECT * FROM credential_verify(:'old_key', 'counted_batches');
SELECT count(*) AS audit_rows FROM credential_rotate_audit WHERE target_table = 'public.counted_batches';
DROP TABLE counted_batches;
DROP FUNCTION keep_old_secret();
