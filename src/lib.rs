//! credential_rotate: rotate the AES-256-GCM key that seals application credential secrets,
//! inside PostgreSQL, in the caller's transaction.
//!
//! Plain Rust, no pgrx (unit-tested and fuzzed without a server):
//!
//! - [`envelope`]: the application's envelope format, its cipher and the rotation decision.
//! - [`key`]: parsing keys as the application reads them, fingerprints, generation.
//! - [`container`]: reading and splicing a stored jsonb container's bytes.
//!
//! The SQL layer:
//!
//! - [`functions`]: the single-value functions (seal, open, re-seal one value, keys).
//! - [`rotate`]: `credential_reencrypt` and its per-row helpers.
//! - [`verify`]: `credential_verify`, `credential_verify_rows`, `credential_key_census` and
//!   their per-row helpers.
//! - [`statement`]: the statements a rotation, verification or census runs over its target.
//! - [`target`]: resolving, locking and checking the table and column a call works on.
//! - [`call`]: the per-call state the row helpers share, wiped on every exit path.
//! - [`audit`]: the audit row of a rotation.
//! - [`progress`]: the NOTICEs a rotation sends while it runs.
//! - [`jsonb`]: a jsonb datum fed to [`container`], and written back.
//! - [`encoding`]: text between the database encoding and the UTF-8 of every plaintext.
//! - [`error`]: the one error type and its SQLSTATEs.
//! - [`hygiene`]: masking keys in statement text (logs, `pg_stat_activity`, statistics).

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

pub mod audit;
pub mod call;
pub mod container;
pub mod encoding;
pub mod envelope;
pub mod error;
pub mod functions;
pub mod hygiene;
pub mod jsonb;
pub mod key;
pub mod progress;
pub mod rotate;
pub mod statement;
pub mod target;
pub mod verify;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/audit.sql", name = "audit");
extension_sql_file!(
    "../sql/batched.sql",
    name = "batched",
    requires = [
        rotate::credential_reencrypt,
        rotate::_credential_reencrypt_blocks
    ]
);
// The one hand-written change of 0.2.0 (function descriptions), applied by a fresh install
// and by ALTER EXTENSION UPDATE from 0.1.0 alike: one file, so the two cannot drift.
extension_sql_file!(
    "../sql/credential_rotate--0.1.0--0.2.0.sql",
    name = "descriptions_0_2_0",
    requires = [
        "batched",
        rotate::credential_reencrypt,
        verify::credential_verify,
        verify::credential_verify_rows,
        audit::_credential_audit_append,
        rotate::_credential_reencrypt_blocks,
        rotate::_credential_reencrypt_row,
        rotate::_credential_reencrypt_row_jsonb,
        rotate::_credential_reencrypt_take,
        rotate::_credential_reencrypt_take_jsonb,
        verify::_credential_status,
        verify::_credential_status_jsonb,
        functions::credential_encrypt_jsonb,
        functions::credential_encrypt_text,
        functions::credential_decrypt_jsonb,
        functions::credential_decrypt_text,
        functions::credential_generate_key,
        functions::credential_key_fingerprint,
        functions::credential_reencrypt_value_jsonb,
        functions::credential_reencrypt_value_text,
        functions::_credential_check_keys,
    ]
);
// Several old keys (0.3.0): the audit column, the procedure's array form and the new
// descriptions; the upgrade script repeats these statements.
extension_sql_file!(
    "../sql/several_keys.sql",
    name = "several_keys",
    requires = [
        "audit",
        "descriptions_0_2_0",
        rotate::credential_reencrypt_keys,
        rotate::_credential_reencrypt_blocks_keys,
        verify::credential_key_census,
        verify::_credential_census_status,
        verify::_credential_census_status_jsonb,
        functions::credential_reencrypt_value_jsonb_keys,
        functions::credential_reencrypt_value_text_keys,
        functions::_credential_check_old_keys,
    ]
);
extension_sql_file!("../sql/finalize.sql", finalize);

/// `credential_rotate.progress_rows`: a NOTICE every this many rows scanned; 0 silences it.
pub static PROGRESS_ROWS: GucSetting<i32> = GucSetting::<i32>::new(100_000);

/// `credential_rotate.trust_table_code`: run a rotation even when the table carries code of
/// another role (triggers, rules, index expressions, constraints, generated columns) that could
/// read the keys from the statement text. Superuser-only (or `GRANT SET ON PARAMETER`): a
/// table's or database's owner must not be able to turn the check off for the DBA by
/// `ALTER DATABASE … SET` or `ALTER ROLE … SET`.
pub static TRUST_TABLE_CODE: GucSetting<bool> = GucSetting::<bool>::new(false);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    hygiene::install();
    call::register_callbacks();
    GucRegistry::define_int_guc(
        c"credential_rotate.progress_rows",
        c"Rows between two progress NOTICEs of credential_reencrypt; 0 disables them.",
        c"Each NOTICE gives the rows scanned, the table's estimated size and the rate.",
        &PROGRESS_ROWS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"credential_rotate.trust_table_code",
        c"Lets credential_reencrypt run code of other roles attached to the table.",
        c"Triggers, rules, index expressions, constraints and generated columns run inside the rotation and can read its statement text, keys included. Off: such code is refused.",
        &TRUST_TABLE_CODE,
        GucContext::Suset,
        GucFlags::default(),
    );
}

#[cfg(any(test, feature = "pg_test"))]
mod sql_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
