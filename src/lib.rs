//! credential_rotate: rotate the AES-256-GCM key that seals application credential secrets,
//! inside PostgreSQL, in the caller's transaction.
//!
//! Plain Rust, no pgrx, in the workspace's `credential-rotate-core` crate (crates/core), shared
//! with the `credential-rotate` program and the fuzz targets, and re-exported here so that the
//! SQL layer names them as before:
//!
//! - [`envelope`]: the application's envelope format, its cipher and the rotation decision.
//! - [`key`]: parsing keys as the application reads them, fingerprints, generation.
//! - [`container`]: reading and splicing a stored jsonb container's bytes.
//! - [`stored`]: a stored jsonb container read as an envelope's fields.
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

pub use credential_rotate_core::{container, envelope, key, stored, table};

mod args;
mod audit;
mod batched;
mod call;
mod catalog;
mod encoding;
mod error;
mod functions;
mod hygiene;
mod jsonb;
mod progress;
mod reseal;
mod rotate;
mod settings;
mod statement;
mod table_code;
mod target;
mod verify;
mod written;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    hygiene::install();
    table_code::install();
    call::register_callbacks();
    settings::init();
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
