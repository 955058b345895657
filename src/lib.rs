//! credential_rotate: rotate the AES-256-GCM key that seals application credential secrets,
//! inside PostgreSQL, in the caller's transaction.
//!
//! - [`envelope`] and [`key`]: the application's format and its cryptography, plain Rust.
//! - [`error`]: the one error type and its SQLSTATEs.
//! - [`functions`], [`rotate`], [`target`]: the SQL surface.
//! - [`hygiene`]: keeping keys out of the server log.

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

pub mod container;
pub mod envelope;
pub mod error;
pub mod functions;
pub mod hygiene;
pub mod jsonb;
pub mod key;
pub mod rotate;
pub mod target;

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
extension_sql_file!("../sql/finalize.sql", finalize);

/// `credential_rotate.progress_rows`: a NOTICE every this many rows scanned; 0 silences it.
pub static PROGRESS_ROWS: GucSetting<i32> = GucSetting::<i32>::new(100_000);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    hygiene::install();
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
