//! credential_rotate: rotate the AES-256-GCM key that seals application credential secrets,
//! inside PostgreSQL, in the caller's transaction.
//!
//! - [`envelope`] and [`key`]: the application's format and its cryptography, plain Rust.
//! - [`error`]: the one error type and its SQLSTATEs.
//! - [`functions`], [`rotate`], [`target`]: the SQL surface.
//! - [`hygiene`]: keeping keys out of the server log.

use pgrx::prelude::*;

pub mod envelope;
pub mod error;
pub mod functions;
pub mod hygiene;
pub mod key;
pub mod rotate;
pub mod target;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/finalize.sql", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    hygiene::install();
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
