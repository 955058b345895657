-- The description of every routine, for \df+. Included as it is by the install script and by
-- every upgrade script (COMMENT ON replaces), so that the two cannot drift apart.

COMMENT ON FUNCTION @extschema@.credential_reencrypt(text, text, text, text, boolean, boolean) IS
    'Re-encrypts every secret of the column from old_key to new_key in place, in the caller''s transaction; returns scanned, updated, already_current, empty';
COMMENT ON FUNCTION @extschema@.credential_reencrypt(text[], text, text, text, boolean, boolean) IS
    'Re-encrypts every secret of the column that opens with any of old_keys to new_key, in place, in the caller''s transaction; returns scanned, updated, already_current, empty';
COMMENT ON PROCEDURE @extschema@.credential_reencrypt_batched(text, text, integer, text, text) IS
    'Re-encrypts in batches of at most batch_rows rows, each committed on its own, then one atomic final pass; resumable by calling it again; CALL it in autocommit';
COMMENT ON PROCEDURE @extschema@.credential_reencrypt_batched(text[], text, integer, text, text) IS
    'As credential_reencrypt_batched(text, ...) from any of several old keys; its final NOTICE gives the rows each old key opened';
COMMENT ON FUNCTION @extschema@.credential_reencrypt_value(jsonb, text, text) IS
    'One envelope re-sealed from old_key to new_key (unchanged when already current or {}), for a caller''s own UPDATE';
COMMENT ON FUNCTION @extschema@.credential_reencrypt_value(text, text, text) IS
    'One envelope re-sealed from old_key to new_key (unchanged when already current or {}), for a caller''s own UPDATE';
COMMENT ON FUNCTION @extschema@.credential_reencrypt_value(jsonb, text[], text) IS
    'One envelope re-sealed from whichever of old_keys opens it to new_key (unchanged when already current or {}), for a caller''s own UPDATE';
COMMENT ON FUNCTION @extschema@.credential_reencrypt_value(text, text[], text) IS
    'One envelope re-sealed from whichever of old_keys opens it to new_key (unchanged when already current or {}), for a caller''s own UPDATE';
COMMENT ON FUNCTION @extschema@.credential_verify(text, text, text) IS
    'Counts the secrets of the column that open with key: readable, not_readable, empty, malformed; changes nothing';
COMMENT ON FUNCTION @extschema@.credential_verify_rows(text, text, text) IS
    'Lists the rows whose secret does not open with key, by primary key and reason; never secret material';
COMMENT ON FUNCTION @extschema@.credential_key_census(text[], text, text) IS
    'Counts the secrets of the column that open with each of keys, then not_readable, empty, malformed, in one scan; changes nothing';
COMMENT ON FUNCTION @extschema@.credential_encrypt(jsonb, text) IS
    'Seals the compact JSON text of a value under key, as the application does (pass text to keep exact bytes)';
COMMENT ON FUNCTION @extschema@.credential_encrypt(text, text) IS
    'Seals JSON text byte for byte as the application does: an AES-256-GCM envelope under key';
COMMENT ON FUNCTION @extschema@.credential_decrypt(jsonb, text) IS
    'Opens an envelope with key and returns the exact plaintext text; NULL for {}';
COMMENT ON FUNCTION @extschema@.credential_decrypt(text, text) IS
    'Opens an envelope with key and returns the exact plaintext text; NULL for {}';
COMMENT ON FUNCTION @extschema@.credential_generate_key() IS
    'A new random key: standard base64 of 32 bytes from the operating system''s CSPRNG';
COMMENT ON FUNCTION @extschema@.credential_key_fingerprint(text) IS
    'A short, stable identifier of a key that reveals nothing about it, as the audit table records it';

COMMENT ON FUNCTION credential_rotate._credential_audit_append() IS
    'Internal to credential_reencrypt: appends the audit row of the rotation that just finished in this backend';
COMMENT ON FUNCTION credential_rotate._credential_check_keys(text, text) IS
    'Internal to credential_reencrypt_batched: checks both keys before the first batch';
COMMENT ON FUNCTION credential_rotate._credential_batched_start(text[], text, integer) IS
    'Internal to credential_reencrypt_batched: checks the keys, the batch size, the privilege and autocommit before any row is read';
COMMENT ON PROCEDURE credential_rotate._credential_reencrypt_batched(text[], text, integer, text, text) IS
    'Internal to credential_reencrypt_batched: the loop over its batches, then the final pass';
COMMENT ON FUNCTION credential_rotate._credential_reencrypt_batch(text[], text, text, text, integer, tid, bigint[]) IS
    'Internal to credential_reencrypt_batched: one batch, the next batch_rows rows from a tid, or the final pass';
COMMENT ON FUNCTION credential_rotate._credential_reencrypt_row(oid, tid, text) IS
    'Internal to credential_reencrypt: the per-row qual of a json or text column';
COMMENT ON FUNCTION credential_rotate._credential_reencrypt_row_jsonb(oid, tid, jsonb) IS
    'Internal to credential_reencrypt: the per-row qual of a jsonb column';
COMMENT ON FUNCTION credential_rotate._credential_reencrypt_take(tid) IS
    'Internal to credential_reencrypt: the re-sealed value of a json or text row';
COMMENT ON FUNCTION credential_rotate._credential_reencrypt_take_jsonb(tid, jsonb) IS
    'Internal to credential_reencrypt: the re-sealed value of a jsonb row';
COMMENT ON FUNCTION credential_rotate._credential_status(text) IS
    'Internal to credential_verify: the status of one json or text secret';
COMMENT ON FUNCTION credential_rotate._credential_status_jsonb(jsonb) IS
    'Internal to credential_verify: the status of one jsonb secret';
COMMENT ON FUNCTION credential_rotate._credential_census_status(text) IS
    'Internal to credential_key_census: the position of the key that opens one json or text secret';
COMMENT ON FUNCTION credential_rotate._credential_census_status_jsonb(jsonb) IS
    'Internal to credential_key_census: the position of the key that opens one jsonb secret';

COMMENT ON SCHEMA credential_rotate IS
    'Internals of the extension credential_rotate, called by their full name by the extension itself';
