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
    new_key_fingerprint text NOT NULL,
    rows_by_old_key jsonb
);
COMMENT ON TABLE credential_rotate_audit IS
    'One row per committed credential_reencrypt call; key fingerprints only';
COMMENT ON COLUMN credential_rotate_audit.rows_by_old_key IS
    'Rows each old key opened, by key fingerprint; NULL for rotations recorded before 0.3.0';
SELECT pg_catalog.pg_extension_config_dump('credential_rotate_audit', '');
SELECT pg_catalog.pg_extension_config_dump('credential_rotate_audit_id_seq', '');
REVOKE ALL ON credential_rotate_audit FROM PUBLIC;

-- Rows are appended by the SECURITY DEFINER function _credential_audit_append(), which
-- takes no arguments: it records the rotation that has just finished in the same backend, so a
-- role allowed to call it cannot forge an entry. Nobody else can write the table.
