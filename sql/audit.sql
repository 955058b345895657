-- The audit trail: one row per successful, non-dry-run credential_reencrypt, written in the
-- caller's transaction (a rollback removes it with the rotation). Fingerprints only, never
-- key material. Dumped by pg_dump with the rest of the data.
CREATE TABLE credential_rotate_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rotated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    rotated_by name NOT NULL,
    session_role name NOT NULL DEFAULT session_user,
    target_table text NOT NULL,
    secret_column text NOT NULL,
    scanned bigint NOT NULL,
    updated bigint NOT NULL,
    already_current bigint NOT NULL,
    empty bigint NOT NULL,
    old_key_fingerprint text NOT NULL,
    new_key_fingerprint text NOT NULL
);
COMMENT ON TABLE credential_rotate_audit IS
    'One row per committed credential_reencrypt call; key fingerprints only';
SELECT pg_catalog.pg_extension_config_dump('credential_rotate_audit', '');
SELECT pg_catalog.pg_extension_config_dump('credential_rotate_audit_id_seq', '');
REVOKE ALL ON credential_rotate_audit FROM PUBLIC;

-- Rotation roles append through this function rather than holding INSERT on the table, so the
-- trail stays append-only for them. rotated_by is the caller's current_user, passed in by
-- credential_reencrypt (inside a SECURITY DEFINER function current_user is the owner).
CREATE FUNCTION _credential_audit_append(
    rotated_by name, target_table text, secret_column text,
    scanned bigint, updated bigint, already_current bigint, empty bigint,
    old_key_fingerprint text, new_key_fingerprint text
) RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.credential_rotate_audit
        (rotated_by, target_table, secret_column, scanned, updated, already_current, empty,
         old_key_fingerprint, new_key_fingerprint)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
$$;
