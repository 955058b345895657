//! The program's one error type, and the one place it becomes an exit code and a message.
//!
//! Messages name environment variables, files, relations, columns, primary keys and keys by
//! position or fingerprint; never a key, a plaintext or a password.

use credential_rotate_core::key::KeyError;
use credential_rotate_core::table::TargetError;

/// Exit codes, documented in docs/cli.md.
pub const EXIT_OK: u8 = 0;
/// Refused or failed; the transaction was rolled back (or never began): nothing changed.
pub const EXIT_REFUSED: u8 = 1;
/// Bad arguments, environment, key or connection string: nothing was attempted.
pub const EXIT_USAGE: u8 = 2;
/// The connection was lost while COMMIT was in flight: it may or may not have committed.
pub const EXIT_UNKNOWN: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{0} is not set")]
    MissingEnv(&'static str),
    #[error("{what} is not a valid key: {reason}")]
    InvalidKey { what: String, reason: KeyError },
    #[error("{0}")]
    SameKeys(String),
    #[error("cannot read the key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("the connection string in {var}: {reason}")]
    ConnectionString { var: &'static str, reason: String },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("{0}")]
    Database(String),
    /// The table, its column or one of its rows, as the extension refuses them too.
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("relation {0} was renamed or replaced while the program waited for its lock")]
    ConcurrentChange(String),
    #[error("a trigger or rule on {table} skipped {skipped} of the {expected} rows to re-encrypt")]
    RowsSkipped {
        table: String,
        expected: u64,
        skipped: u64,
    },
    #[error("verification before COMMIT: {mismatched} of the {written} rows re-sealed in {table} do not hold what was written (a trigger or rule on the table changed them)")]
    VerificationFailed {
        table: String,
        written: u64,
        mismatched: u64,
    },
    #[error("after the rotation {not_readable} secrets of {table} do not open with the new key and {malformed} are malformed")]
    NotRotated {
        table: String,
        not_readable: i64,
        malformed: i64,
    },
    #[error(
        "{not_readable} secrets of {table} do not open with the key and {malformed} are malformed"
    )]
    VerifyFailed {
        table: String,
        not_readable: i64,
        malformed: i64,
    },
    #[error("--mode extension: {0}")]
    NoExtension(String),
    #[error("the connection was lost while COMMIT was in flight ({0}): the rotation may or may not have been committed. Find out before anything else: `credential-rotate verify` with the new key (not_readable=0: it committed) and `credential-rotate census` with both keys")]
    OutcomeUnknown(String),
    #[error("the connection was lost: {0}")]
    ConnectionLost(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_)
            | Error::MissingEnv(_)
            | Error::InvalidKey { .. }
            | Error::SameKeys(_)
            | Error::KeyFile { .. }
            | Error::ConnectionString { .. }
            | Error::Tls(_) => EXIT_USAGE,
            Error::OutcomeUnknown(_) => EXIT_UNKNOWN,
            _ => EXIT_REFUSED,
        }
    }
}

/// A server's answer, with its SQLSTATE; a lost connection says so.
impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Error {
        if let Some(db) = e.as_db_error() {
            let mut text = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            text.push_str(&format!(" (SQLSTATE {})", db.code().code()));
            return Error::Database(text);
        }
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        if e.is_closed() || io {
            return Error::ConnectionLost(e.to_string());
        }
        Error::Database(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_exit_code() {
        assert_eq!(Error::MissingEnv("X").exit_code(), EXIT_USAGE);
        assert_eq!(Error::Tls("x".into()).exit_code(), EXIT_USAGE);
        assert_eq!(
            Error::from(TargetError::RowSecurity("t".into())).exit_code(),
            EXIT_REFUSED
        );
        assert_eq!(Error::ConnectionLost("x".into()).exit_code(), EXIT_REFUSED);
        let row = Error::from(TargetError::Row {
            table: "public.t".into(),
            pk: "(id)=(7)".into(),
            reason: credential_rotate_core::envelope::EnvelopeError::OpensWithNeitherKey,
        });
        assert_eq!(row.exit_code(), EXIT_REFUSED);
        assert!(row
            .to_string()
            .starts_with("cannot re-encrypt row (id)=(7) of public.t: "));
        let unknown = Error::OutcomeUnknown("x".into());
        assert_eq!(unknown.exit_code(), EXIT_UNKNOWN);
        assert!(unknown.to_string().contains("credential-rotate verify"));
        assert_ne!(EXIT_OK, EXIT_REFUSED);
    }
}
