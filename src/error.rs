//! The extension's one error type, and the one place it becomes a Postgres ERROR.
//!
//! Messages name arguments, relations, columns and primary keys; they never carry a key, a
//! plaintext or an envelope field.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

use crate::envelope::EnvelopeError;
use crate::key::KeyError;
use crate::table::TargetError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{arg} is not a valid key: {reason}")]
    InvalidKey { arg: &'static str, reason: KeyError },
    #[error("old_key and new_key are the same key")]
    SameKey,
    /// A key of an array argument, named by its position (from 1), never by its value.
    #[error("{arg}[{position}] is not a valid key: {reason}")]
    InvalidKeyAt {
        arg: &'static str,
        position: usize,
        reason: KeyError,
    },
    #[error("{0} holds no key")]
    NoKeys(&'static str),
    #[error("{arg}[{second}] is the same key as {arg}[{first}]")]
    DuplicateKey {
        arg: &'static str,
        first: usize,
        second: usize,
    },
    #[error("new_key is the same key as old_keys[{position}]")]
    NewKeyAmongOld { position: usize },
    #[error("{0} must not be NULL")]
    NullArgument(&'static str),
    /// The table, its column or one of its rows, as the program refuses them too.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A NULL reaching a non-`Option` argument: only STRICT functions take one, and Postgres
    /// never calls them with a NULL. Refused rather than passed on as a null pointer.
    #[error("argument {0} is NULL")]
    NullDatum(usize),
    #[error(
        "column {column} of relation {table} is of type {found}, not timestamptz or timestamp"
    )]
    WrongTimestampType {
        table: String,
        column: String,
        found: String,
    },
    #[error("relation {0} was renamed or replaced while the call waited for its lock")]
    ConcurrentChange(String),
    #[error("a rotation of {table} would run code of another role (with the caller's rights), or code it cannot check: {code}")]
    ForeignTableCode { table: String, code: String },
    #[error("batch_rows must be a positive number of rows")]
    BatchRows,
    #[error("credential_reencrypt_batched commits after each batch: it cannot run inside a transaction block or a function")]
    BatchedInTransaction,
    #[error("permission denied for procedure {0}")]
    PermissionDenied(&'static str),
    #[error("{0}")]
    Envelope(EnvelopeError),
    #[error("a trigger on {table} skipped rows the rotation re-sealed: they were not written")]
    RowsSkipped { table: String },
    #[error("a trigger on {table} changed the value the rotation wrote to row {pk}: it is not stored re-sealed")]
    Overwritten { table: String, pk: String },
    #[error("after the rotation {rows} rows of {table} do not open with the new key: table code wrote them again")]
    NotRotated { table: String, rows: i64 },
    #[error("the call would run function {function}, owned by {owner}: code of another role, which runs with the caller's rights")]
    ForeignCodeRan { function: String, owner: String },
    /// An internal helper called outside the call it serves (or after it ended).
    #[error("{helper} is only called by {caller}, while it runs")]
    NotInCall {
        helper: &'static str,
        caller: &'static str,
    },
    #[error("credential_reencrypt and credential_verify cannot be nested")]
    Nested,
    #[error("credential_reencrypt must run in a READ COMMITTED transaction")]
    IsolationLevel,
    #[error("the operating system's random number generator failed")]
    Random,
    /// Text with no exact equivalent across the database encoding and UTF-8 (the encoding of
    /// every plaintext). Names what, never its content.
    #[error("{what} has a character with no equivalent in encoding \"{to}\" (from \"{from}\")")]
    Untranslatable {
        what: &'static str,
        from: &'static str,
        to: &'static str,
    },
    /// SQL_ASCII text that must be UTF-8 (a plaintext, JSON, a name) and is not.
    #[error("{0} is not valid UTF-8, as every plaintext is (the database encoding is SQL_ASCII)")]
    NotUtf8(&'static str),
    #[error("{0} holds a NUL character, which no text value can hold")]
    NulCharacter(&'static str),
    /// A routine of an earlier version's catalog whose library code is gone.
    #[error("this database's credential_rotate is at an older version than its library")]
    OlderVersion,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("SPI error: {0}")]
    Spi(#[from] pgrx::spi::SpiError),
}

impl From<EnvelopeError> for Error {
    fn from(e: EnvelopeError) -> Error {
        Error::Envelope(e)
    }
}

/// An argument that must not be NULL: its value, or the error naming it.
pub fn required<T>(value: Option<T>, arg: &'static str) -> Result<T, Error> {
    value.ok_or(Error::NullArgument(arg))
}

impl Error {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            Error::InvalidKey { .. }
            | Error::SameKey
            | Error::NullArgument(_)
            | Error::NullDatum(_)
            | Error::InvalidKeyAt { .. }
            | Error::NoKeys(_)
            | Error::DuplicateKey { .. }
            | Error::NewKeyAmongOld { .. }
            | Error::BatchRows => ERRCODE_INVALID_PARAMETER_VALUE,
            Error::BatchedInTransaction => ERRCODE_ACTIVE_SQL_TRANSACTION,
            Error::Target(t) => match t {
                TargetError::UndefinedTable(_) => ERRCODE_UNDEFINED_TABLE,
                TargetError::NotATable(_) => ERRCODE_WRONG_OBJECT_TYPE,
                TargetError::UndefinedColumn { .. } => ERRCODE_UNDEFINED_COLUMN,
                TargetError::WrongColumnType { .. } => ERRCODE_DATATYPE_MISMATCH,
                TargetError::NoPrimaryKey(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                TargetError::RowSecurity(_) => ERRCODE_INSUFFICIENT_PRIVILEGE,
                TargetError::Row { reason, .. } => envelope_sqlstate(*reason),
            },
            Error::WrongTimestampType { .. } => ERRCODE_DATATYPE_MISMATCH,
            Error::ForeignTableCode { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Error::PermissionDenied(_) => ERRCODE_INSUFFICIENT_PRIVILEGE,
            // The caller's name no longer denotes the table it resolved: retrying is right.
            Error::ConcurrentChange(_) => ERRCODE_T_R_SERIALIZATION_FAILURE,
            Error::Envelope(reason) => envelope_sqlstate(*reason),
            Error::RowsSkipped { .. } => ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            Error::Overwritten { .. } | Error::NotRotated { .. } => {
                ERRCODE_TRIGGERED_DATA_CHANGE_VIOLATION
            }
            Error::ForeignCodeRan { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Error::OlderVersion => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Error::NotInCall { .. } | Error::Nested => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Error::IsolationLevel => ERRCODE_ACTIVE_SQL_TRANSACTION,
            Error::Untranslatable { .. } => ERRCODE_UNTRANSLATABLE_CHARACTER,
            Error::NotUtf8(_) | Error::NulCharacter(_) => ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            Error::Random | Error::Internal(_) | Error::Spi(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match self {
            Error::Target(TargetError::Row { .. })
            | Error::RowsSkipped { .. }
            | Error::Overwritten { .. }
            | Error::NotRotated { .. } => {
                Some("No row was changed. credential_verify_rows() lists every row that does not open with a key.")
            }
            Error::InvalidKey { .. } | Error::InvalidKeyAt { .. } => Some(
                "A key is the standard base64 of 32 random bytes, as credential_generate_key() returns.",
            ),
            Error::Target(TargetError::RowSecurity(_)) => Some(
                "Nothing was read or changed. Run it as the table's owner (unless the table has FORCE ROW LEVEL SECURITY), as a role with BYPASSRLS, or as a superuser.",
            ),
            Error::ConcurrentChange(_) => Some("Nothing was changed. Call it again."),
            Error::OlderVersion => Some("Run ALTER EXTENSION credential_rotate UPDATE in this database."),
            Error::BatchedInTransaction => Some(
                "Nothing was read or changed. CALL it in autocommit mode, outside BEGIN ... COMMIT (psql: \\set AUTOCOMMIT on); give it a lock_timeout with SET lock_timeout before the CALL.",
            ),
            Error::ForeignTableCode { .. } | Error::ForeignCodeRan { .. } => Some(
                "Nothing was changed. Review that code; run the rotation as its owner, or, as a superuser, accept it with SET LOCAL credential_rotate.trust_table_code = on.",
            ),
            Error::IsolationLevel => Some(
                "Under REPEATABLE READ or SERIALIZABLE the transaction's snapshot predates the table lock, so rows written while waiting for it would be missed. Use BEGIN ISOLATION LEVEL READ COMMITTED (or a dry run).",
            ),
            _ => None,
        }
    }

    /// Raises this error as a Postgres ERROR. Never returns.
    pub fn report(self) -> ! {
        let mut report = ErrorReport::new(
            self.sqlstate(),
            crate::encoding::message(self.to_string()),
            "credential_rotate",
        );
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }
}

fn envelope_sqlstate(reason: EnvelopeError) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match reason {
        // Well formed, but the key does not open it: the data and the key do not belong together.
        EnvelopeError::DoesNotOpen
        | EnvelopeError::OpensWithNeitherKey
        | EnvelopeError::OpensWithNoKey => ERRCODE_DATA_EXCEPTION,
        EnvelopeError::Random => ERRCODE_INTERNAL_ERROR,
        EnvelopeError::DamagedJsonb => ERRCODE_DATA_CORRUPTED,
        EnvelopeError::TooLarge => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        // The value is not an envelope the extension can read.
        _ => ERRCODE_INVALID_TEXT_REPRESENTATION,
    }
}

/// Unwraps a result or raises its error.
pub trait OrReport<T> {
    fn or_report(self) -> T;
}

impl<T, E: Into<Error>> OrReport<T> for Result<T, E> {
    fn or_report(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.into().report(),
        }
    }
}
