-- Hostile and awkward input: each gets a clear error or the correct result, and nothing
-- changes on error.
\set old_key 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q='
\set new_key 'PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc='
\set SHOW_CONTEXT never
BEGIN;
-- A secret of 1.5 MB, stored out of line (TOAST), rotates and opens to the same bytes.
INSERT INTO credential_profiles (id, name, secret) VALUES
  ('big', 'big', credential_encrypt(json_build_object('blob', repeat('x', 1500000))::text, :'old_key')),
  ('small', 'small', credential_encrypt('{"token":"t"}'::text, :'old_key'));
SELECT pg_column_size(secret) > 1000000 AS stored_large, length(secret::text) > 2000000 AS base64_over_2mb
  FROM credential_profiles WHERE id = 'big';
SELECT md5(credential_decrypt(secret, :'old_key')) AS before_md5 FROM credential_profiles WHERE id = 'big' \gset
SELECT * FROM credential_reencrypt(:'old_key', :'new_key');
SELECT md5(credential_decrypt(secret, :'new_key')) = :'before_md5' AS same_bytes FROM credential_profiles WHERE id = 'big';
-- JSON that is not an object: named, refused, nothing changes.
CREATE TEMP TABLE snapshot AS SELECT md5(string_agg(id || secret::text, ',' ORDER BY id)) AS h FROM credential_profiles;
CREATE FUNCTION pg_temp.unchanged() RETURNS boolean LANGUAGE sql AS $$
  SELECT md5(string_agg(id || secret::text, ',' ORDER BY id)) = (SELECT h FROM snapshot) FROM credential_profiles $$;
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE stmt; RETURN 'ok';
EXCEPTION WHEN others THEN RETURN SQLSTATE || ' ' || SQLERRM; END $$;
SELECT v AS stored, pg_temp.try(format(
         $q$ UPDATE credential_profiles SET secret = %L::jsonb WHERE id = 'small';
             SELECT credential_reencrypt(%L, %L) $q$, v, :'new_key', :'old_key')) AS outcome
  FROM unnest(ARRAY['[]', '"aes-256-gcm"', 'null', '42', 'true', '{"algorithm": null}']) AS v;
SELECT pg_temp.unchanged();
-- Identifiers that need quoting: a schema, mixed case, spaces and quotes; a text column.
CREATE SCHEMA "Tenant ""A""";
CREATE TABLE "Tenant ""A"""."Credential Profiles" ("Profile Id" int PRIMARY KEY, "Sealed Secret" text);
INSERT INTO "Tenant ""A"""."Credential Profiles" VALUES
  (1, credential_encrypt('{"token":"a"}'::text, :'old_key')::text), (2, NULL), (3, '{}');
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', '"Tenant ""A"""."Credential Profiles"', 'Sealed Secret');
SELECT credential_decrypt("Sealed Secret", :'new_key') FROM "Tenant ""A"""."Credential Profiles" WHERE "Profile Id" = 1;
SELECT * FROM credential_verify_rows(:'new_key', '"Tenant ""A"""."Credential Profiles"', 'Sealed Secret');
UPDATE "Tenant ""A"""."Credential Profiles" SET "Sealed Secret" = 'not json' WHERE "Profile Id" = 3;
SAVEPOINT s;
SELECT * FROM credential_reencrypt(:'new_key', :'old_key', '"Tenant ""A"""."Credential Profiles"', 'Sealed Secret');
ROLLBACK TO s;
-- Table names are parsed like SQL (quote what needs quoting); column names are taken as they
-- are, so case and spaces must match.
SELECT * FROM credential_reencrypt(:'new_key', :'old_key', 'Tenant "A".Credential Profiles', 'Sealed Secret');
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(:'new_key', :'old_key', '"Tenant ""A""".credential_profiles', 'Sealed Secret');
ROLLBACK TO s;
SELECT * FROM credential_reencrypt(:'new_key', :'old_key', '"Tenant ""A"""."Credential Profiles"', 'sealed secret');
ROLLBACK TO s;
-- A partitioned table: rows are named by primary key whatever partition holds them.
CREATE TABLE tenant_secrets (tenant int, id text, secret jsonb, PRIMARY KEY (tenant, id))
  PARTITION BY LIST (tenant);
CREATE TABLE tenant_secrets_1 PARTITION OF tenant_secrets FOR VALUES IN (1);
CREATE TABLE tenant_secrets_2 PARTITION OF tenant_secrets FOR VALUES IN (2);
INSERT INTO tenant_secrets
  SELECT t, 's' || i, credential_encrypt(format('{"n":%s}', i), :'old_key')
    FROM generate_series(1, 2) t, generate_series(1, 3) i;
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'tenant_secrets');
SELECT tenant, id, credential_decrypt(secret, :'new_key') FROM tenant_secrets ORDER BY 1, 2;
UPDATE tenant_secrets SET secret = '{"algorithm":"aes-256-gcm"}' WHERE tenant = 2 AND id = 's2';
SAVEPOINT p;
SELECT * FROM credential_reencrypt(:'new_key', :'old_key', 'tenant_secrets');
ROLLBACK TO p;
-- Columns of other types.
CREATE TABLE odd (id int PRIMARY KEY, n integer, b bytea, arr jsonb[]);
SELECT pg_temp.try(format('SELECT credential_reencrypt(%L, %L, %L, %L)', :'old_key', :'new_key', 'odd', c)) AS outcome
  FROM unnest(ARRAY['n', 'b', 'arr', 'ctid', 'id']) AS c;
ROLLBACK;
