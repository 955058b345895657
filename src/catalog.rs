//! The hand-written SQL of `sql/` the install script includes, in order: the audit table, the batched procedures, every routine's description, then the privileges.
//! The upgrade scripts include the same files (scripts/assemble-sql.sh), so each routine has
//! one source.

use pgrx::prelude::*;

// `requires` names the routines by path, as strings: pgrx orders the install script by them.

/// The schema of the extension's internals: the per-row helpers, the batched procedure's loop
/// and batches, the audit append. Users call the entry points, which stay in the schema the
/// extension is created in (public by default) with the audit table; the internals are out of
/// their way here, never on a search_path, always called by their full name. PUBLIC has USAGE
/// on it (sql/finalize.sql): a rotation role's statements reach the helpers, each of which
/// refuses to act outside the call it serves. A schema of that name that the extension does
/// not own makes CREATE EXTENSION fail.
#[pg_schema]
mod credential_rotate {}

extension_sql_file!("../sql/audit.sql", name = "audit");
extension_sql_file!(
    "../sql/batched.sql",
    name = "batched",
    requires = [
        functions::_credential_check_keys,
        batched::_credential_batched_start,
        batched::_credential_reencrypt_batch,
    ]
);
// Every routine's description, after every routine.
extension_sql_file!(
    "../sql/descriptions.sql",
    name = "descriptions",
    requires = [
        "audit",
        "batched",
        rotate::credential_reencrypt,
        rotate::credential_reencrypt_keys,
        verify::credential_verify,
        verify::credential_verify_rows,
        verify::credential_key_census,
        audit::_credential_audit_append,
        reseal::_credential_reencrypt_row,
        reseal::_credential_reencrypt_row_jsonb,
        reseal::_credential_reencrypt_take,
        reseal::_credential_reencrypt_take_jsonb,
        verify::_credential_status,
        verify::_credential_status_jsonb,
        verify::_credential_census_status,
        verify::_credential_census_status_jsonb,
        functions::credential_encrypt_jsonb,
        functions::credential_encrypt_text,
        functions::credential_decrypt_jsonb,
        functions::credential_decrypt_text,
        functions::credential_generate_key,
        functions::credential_key_fingerprint,
        functions::credential_reencrypt_value_jsonb,
        functions::credential_reencrypt_value_text,
        functions::credential_reencrypt_value_jsonb_keys,
        functions::credential_reencrypt_value_text_keys,
    ]
);
extension_sql_file!("../sql/finalize.sql", finalize);
