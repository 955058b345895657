-- Plaintext is UTF-8 JSON whatever the database encoding. scripts/test.sh runs this suite in
-- a UTF8, a LATIN1 and a SQL_ASCII database, with the client encoding pg_regress sets (the
-- database's). This file is ASCII and shows every non-ASCII value as the hex of its UTF-8
-- bytes (convert_to), so that its output is the same in every encoding but where a database
-- cannot hold a character:
--   07_encodings.out    UTF8 and SQL_ASCII: a plaintext with U+2603 is returned; messages
--                       show non-ASCII names as they are.
--   07_encodings_1.out  LATIN1: that plaintext is refused (22P05, naming no plaintext);
--                       messages show non-ASCII names as \uXXXX escapes.
\set key 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q='
\set new_key 'PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc='
-- Sealed by the application (Node): {"s":"d\u00e9"} and {"s":"d\u00e9\u2603"}.
\set e_acute '{"algorithm":"aes-256-gcm","keyId":"v1","iv":"pZ/oAjBVBVX7kxEw","ciphertext":"JzIZ1Qv+QrG+oqk=","authTag":"eLGQrnfSilbmH5IDUZjKTw=="}'
\set snowman '{"algorithm":"aes-256-gcm","keyId":"v1","iv":"LprUDjrCCRYo0db5","ciphertext":"DYmZIYwVH2KJqzjGQ24=","authTag":"zteh0gIdBjAUbY0ns+F1Rw=="}'
SELECT current_setting('server_encoding') IN ('UTF8', 'LATIN1', 'SQL_ASCII') AS known_encoding;
-- Decrypted into the database encoding: converted back, the UTF-8 bytes Node sealed (UTF-8
-- labelled LATIN1 would convert to c383c2a9 for the e-acute).
SELECT encode(convert_to(credential_decrypt(:'e_acute'::jsonb, :'key'), 'UTF8'), 'hex') AS utf8;
SELECT encode(convert_to(credential_decrypt(:'e_acute'::text, :'key'), 'UTF8'), 'hex') AS utf8;
-- A character the database cannot hold is refused, not replaced or mislabelled.
SELECT encode(convert_to(credential_decrypt(:'snowman'::jsonb, :'key'), 'UTF8'), 'hex') AS utf8;
\echo :LAST_ERROR_SQLSTATE
-- Sealed from text in the database encoding: the eleven UTF-8 bytes of {"s":"d\u00e9"}, from
-- text and from jsonb alike (a one-byte-per-character or lossy seal would differ).
SELECT convert_from('\x64c3a9'::bytea, 'UTF8') AS e_acute_text \gset
SELECT length(decode(credential_encrypt('{"s":"' || :'e_acute_text' || '"}', :'key')->>'ciphertext', 'base64')) AS text_bytes,
       length(decode(credential_encrypt(jsonb_build_object('s', :'e_acute_text'), :'key')->>'ciphertext', 'base64')) AS jsonb_bytes;
SELECT encode(convert_to(credential_decrypt(credential_encrypt(jsonb_build_object('s', :'e_acute_text'), :'key'), :'key'), 'UTF8'), 'hex') AS utf8;
-- Rotations of text, json and jsonb columns of a table, a column and a primary key with
-- non-ASCII names, with non-ASCII plaintext, primary key values and extra envelope fields.
SELECT convert_from('\x74c3a9'::bytea, 'UTF8') AS t, convert_from('\x73c3a9'::bytea, 'UTF8') AS c,
       convert_from('\x636cc3a9'::bytea, 'UTF8') AS pk, convert_from('\xc3a9'::bytea, 'UTF8') AS e \gset
-- \gexec would echo the generated statements, with non-ASCII names in the client encoding.
\set ECHO none
SELECT format('CREATE TABLE %I (%I text PRIMARY KEY, %I %s)', :'t' || '_' || ty, :'pk', :'c', ty)
  FROM unnest(ARRAY['text', 'json', 'jsonb']) AS ty ORDER BY ty \gexec
SELECT format('INSERT INTO %I VALUES (%L, %L), (%L, %L)', :'t' || '_' || ty,
              'a', :'e_acute',
              :'e', jsonb_set(:'e_acute'::jsonb, '{note}', to_jsonb(:'e'::text))::text)
  FROM unnest(ARRAY['text', 'json', 'jsonb']) AS ty ORDER BY ty \gexec
\set ECHO all
SELECT ty, r.*
  FROM unnest(ARRAY['text', 'json', 'jsonb']) AS ty,
       credential_reencrypt(:'key', :'new_key', :'t' || '_' || ty, :'c') AS r
 ORDER BY ty;
\set ECHO none
SELECT format('SELECT %L AS ty, encode(convert_to(%I, ''UTF8''), ''hex'') AS pk,
                      encode(convert_to(credential_decrypt(%I::jsonb, %L), ''UTF8''), ''hex'') AS plaintext,
                      encode(convert_to(%I::jsonb->>''note'', ''UTF8''), ''hex'') AS note
                 FROM %I ORDER BY 2', ty, :'pk', :'c', :'new_key', :'c', :'t' || '_' || ty)
  FROM unnest(ARRAY['text', 'json', 'jsonb']) AS ty ORDER BY ty \gexec
\set ECHO all
-- Rows that do not open are named by their non-ASCII primary key.
SELECT ty, encode(convert_to(v.primary_key, 'UTF8'), 'hex') AS primary_key, v.reason
  FROM unnest(ARRAY['text', 'json', 'jsonb']) AS ty,
       credential_verify_rows(:'key', :'t' || '_' || ty, :'c') AS v
 ORDER BY ty, 2;
SELECT ty, v.*
  FROM unnest(ARRAY['text', 'json', 'jsonb']) AS ty,
       credential_verify(:'new_key', :'t' || '_' || ty, :'c') AS v
 ORDER BY ty;
-- The census of the same tables (its statement names the non-ASCII table and column).
SELECT ty, v.status, v.rows
  FROM unnest(ARRAY['text', 'json', 'jsonb']) AS ty,
       credential_key_census(ARRAY[:'key', :'new_key'], :'t' || '_' || ty, :'c') AS v
 ORDER BY ty, v.status, v.rows;
-- A key spelt with a character Node skips inside it (é) is the same key in every database
-- encoding, as a single key and as an element of a key array.
SELECT overlay(:'new_key' placing :'e' from 10 for 0) AS new_key_with_e \gset
SELECT credential_key_fingerprint(:'new_key_with_e') = credential_key_fingerprint(:'new_key') AS same_key;
SELECT * FROM credential_reencrypt(ARRAY[:'new_key_with_e'], :'key', :'t' || '_text', :'c', dry_run => true);
-- A message naming a non-ASCII column.
SELECT * FROM credential_verify(:'new_key', :'t' || '_text', :'c' || 'x');
\set ECHO none
SELECT format('DROP TABLE %I', :'t' || '_' || ty)
  FROM unnest(ARRAY['text', 'json', 'jsonb']) AS ty \gexec
\set ECHO all
