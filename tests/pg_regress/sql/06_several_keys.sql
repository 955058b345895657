-- A DBA retiring two keys at once. Secrets sit under three keys (an interrupted rotation,
-- an instance left on an old key): a census says which rows use which key, one call rotates
-- the two old ones into the third, and a second census shows the old keys unused.
\set k1 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q='
\set k2 'PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc='
\set k3 '6fYx3zeZFQ1n6rJbJdX6bHvZ9kD0n2o8o5H1lY0GkQ4='
-- k1 as Node also accepts it, without its padding: the same 32 bytes.
\set k1_unpadded 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q'
\set SHOW_CONTEXT never
BEGIN;
INSERT INTO credential_profiles (id, name, secret)
  SELECT 'k1-' || i, 'under k1 ' || i, credential_encrypt(format('{"token":"a%s"}', i), :'k1')
    FROM generate_series(1, 4) i;
INSERT INTO credential_profiles (id, name, secret)
  SELECT 'k2-' || i, 'under k2 ' || i, credential_encrypt(format('{"token":"b%s"}', i), :'k2')
    FROM generate_series(1, 3) i;
INSERT INTO credential_profiles (id, name, secret)
  SELECT 'k3-' || i, 'under k3 ' || i, credential_encrypt(format('{"token":"c%s"}', i), :'k3')
    FROM generate_series(1, 2) i;
INSERT INTO credential_profiles (id, name) VALUES ('no-secret', 'no secret');
-- A secret under a key nobody has any more, and one that is not an envelope.
INSERT INTO credential_profiles (id, name, secret) VALUES
  ('stray', 'stray', credential_encrypt('{"token":"lost"}'::text, credential_generate_key())),
  ('broken', 'broken', '{"algorithm":"aes-256-gcm","iv":"AAAA"}');
CREATE TEMP TABLE plain AS
  SELECT id, credential_decrypt(secret, CASE left(id, 2) WHEN 'k1' THEN :'k1'
                                                         WHEN 'k2' THEN :'k2'
                                                         ELSE :'k3' END) AS plaintext
    FROM credential_profiles WHERE id LIKE 'k_-%';
CREATE TEMP TABLE snapshot AS
  SELECT md5(string_agg(id || secret::text, ',' ORDER BY id)) AS h FROM credential_profiles;
CREATE FUNCTION pg_temp.unchanged() RETURNS boolean LANGUAGE sql AS $$
  SELECT md5(string_agg(id || secret::text, ',' ORDER BY id)) = (SELECT h FROM snapshot)
    FROM credential_profiles $$;
-- The keys as the change ticket names them.
SELECT credential_key_fingerprint(:'k1') AS k1, credential_key_fingerprint(:'k2') AS k2,
       credential_key_fingerprint(:'k3') AS k3;
-- Which rows open with which key: one row per key in the order given, then the rest.
SELECT * FROM credential_key_census(ARRAY[:'k1', :'k2', :'k3']);
-- The order of the keys is the order of the answer; a key no row uses counts 0.
SELECT * FROM credential_key_census(ARRAY[:'k3', :'k1'], 'credential_profiles', 'secret');
-- A rotation stops at the first row that opens with no key, names it, and changes nothing.
SAVEPOINT s;
SELECT * FROM credential_reencrypt(ARRAY[:'k1', :'k2'], :'k3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
DELETE FROM credential_profiles WHERE id = 'stray';
SELECT * FROM credential_reencrypt(ARRAY[:'k1', :'k2'], :'k3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT pg_temp.unchanged();
-- The malformed row is repaired (here: removed); the stray one was already gone.
DELETE FROM credential_profiles WHERE id IN ('stray', 'broken');
-- A dry run: the NOTICE says how many rows each old key would open.
SELECT * FROM credential_reencrypt(ARRAY[:'k1', :'k2'], :'k3', dry_run => true);
-- Rotate k1 and k2 into k3, in one call.
SELECT * FROM credential_reencrypt(ARRAY[:'k1', :'k2'], :'k3');
-- Census again: k1 and k2 open nothing, so they can be retired.
SELECT * FROM credential_key_census(ARRAY[:'k1', :'k2', :'k3']);
-- Every secret opens with k3 to the plaintext it held.
SELECT p.id, credential_decrypt(c.secret, :'k3') = p.plaintext AS same_plaintext
  FROM credential_profiles c JOIN plain p USING (id) ORDER BY p.id;
-- The audit row: fingerprints, and the rows each old key opened.
SELECT scanned, updated, already_current, empty, old_key_fingerprint, new_key_fingerprint,
       rows_by_old_key
  FROM credential_rotate_audit WHERE rotated_at = now() ORDER BY id;
-- Again: everything is current.
SELECT * FROM credential_reencrypt(ARRAY[:'k2', :'k1'], :'k3');
-- Quoted literals still call the one-key form (no NOTICE; its errors name old_key).
SELECT * FROM credential_reencrypt(:'k3', :'k1', dry_run => true);
SAVEPOINT s;
SELECT * FROM credential_reencrypt('not a key', :'k1');
ROLLBACK TO s;
-- One value at a time, for a caller's own UPDATE: jsonb and text, any of the old keys.
SELECT credential_decrypt(credential_reencrypt_value(credential_encrypt('{"x":1}'::text, :'k2'),
                                                     ARRAY[:'k1', :'k2'], :'k3'), :'k3') AS jsonb_value,
       credential_decrypt(credential_reencrypt_value(credential_encrypt('{"x":2}'::text, :'k1')::text,
                                                     ARRAY[:'k1', :'k2'], :'k3'), :'k3') AS text_value,
       credential_reencrypt_value('{}'::jsonb, ARRAY[:'k1'], :'k3') AS empty;
UPDATE credential_profiles SET secret = credential_reencrypt_value(secret, ARRAY[:'k1', :'k2'], :'k3')
 WHERE id LIKE 'k_-%';
SELECT * FROM credential_verify(:'k3');

-- Every bad key list: SQLSTATE 22023, naming the argument and the position, never the key.
UPDATE snapshot SET h = (SELECT md5(string_agg(id || secret::text, ',' ORDER BY id))
                           FROM credential_profiles);
SAVEPOINT s;
SELECT * FROM credential_reencrypt('{}'::text[], :'k3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(NULL::text[], :'k3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(ARRAY[:'k1', NULL], :'k3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(ARRAY[:'k1', :'k2', 'c2hvcnQ='], :'k3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(ARRAY[:'k1', :'k2', :'k1_unpadded'], :'k3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(ARRAY[:'k1', :'k3'], :'k3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(ARRAY[:'k1'], NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT credential_reencrypt_value(secret, ARRAY[:'k2', :'k2'], :'k3') FROM credential_profiles;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT credential_reencrypt_value(secret::text, ARRAY[:'k3'], :'k3') FROM credential_profiles;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT credential_reencrypt_value(secret, '{}'::text[], :'k3') FROM credential_profiles;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_key_census(ARRAY[:'k1', NULL]);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_key_census(ARRAY[:'k1', :'k2', :'k1_unpadded']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_key_census('{}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_key_census(NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_key_census(ARRAY[:'k1'], 'no_such_table');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM credential_key_census(ARRAY[:'k1'], 'credential_profiles', 'no_such_column');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
CALL credential_reencrypt_batched(ARRAY[:'k1', :'k1_unpadded'], :'k3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
CALL credential_reencrypt_batched(ARRAY[:'k3'], :'k3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- The census helpers do nothing outside a census.
SELECT credential_rotate._credential_census_status('{}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT credential_rotate._credential_census_status_jsonb('{}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT pg_temp.unchanged() AS unchanged_by_errors;
ROLLBACK;

-- In batches, from several old keys (CALL commits, so this part cleans up after itself).
CREATE TABLE several_keys_batched (id integer PRIMARY KEY, secret jsonb NOT NULL);
INSERT INTO several_keys_batched
  SELECT i, credential_encrypt(format('{"n":%s}', i),
                               (ARRAY[:'k1', :'k2', :'k3'])[1 + i % 3])
    FROM generate_series(1, 30) i;
CALL credential_reencrypt_batched(ARRAY[:'k1', :'k2'], :'k3', target_table => 'several_keys_batched');
SELECT * FROM credential_key_census(ARRAY[:'k1', :'k2', :'k3'], 'several_keys_batched');
SELECT count(*) AS opens_to_its_number FROM several_keys_batched
 WHERE credential_decrypt(secret, :'k3')::jsonb->>'n' = id::text;
SELECT updated, rows_by_old_key FROM credential_rotate_audit
 WHERE target_table = 'public.several_keys_batched' ORDER BY id;
DELETE FROM credential_rotate_audit WHERE target_table = 'public.several_keys_batched';
DROP TABLE several_keys_batched;
