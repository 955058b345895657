//! What a rotation refuses about its table and its rows, whoever runs it (the extension or the
//! `credential-rotate` program): one set of messages, and the one list of column types a secret
//! may have. Names arrive quoted by the server; nothing here carries a key or a secret.

use crate::envelope::EnvelopeError;

/// The type of the secret column, known by its OID: a domain, or another schema's type of the
/// same name, is none of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Jsonb,
    Json,
    Text,
}

impl ColumnType {
    /// The built-in type of this OID, if it is one a secret may have.
    pub fn of_oid(oid: u32) -> Option<ColumnType> {
        // pg_type.dat: jsonb 3802, json 114, text 25.
        match oid {
            3802 => Some(ColumnType::Jsonb),
            114 => Some(ColumnType::Json),
            25 => Some(ColumnType::Text),
            _ => None,
        }
    }

    /// The type, schema-qualified, for a cast in runtime SQL.
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Jsonb => "pg_catalog.jsonb",
            ColumnType::Json => "pg_catalog.json",
            ColumnType::Text => "pg_catalog.text",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("relation \"{0}\" does not exist")]
    UndefinedTable(String),
    #[error("\"{0}\" is not a table")]
    NotATable(String),
    #[error("column \"{column}\" of relation {table} does not exist")]
    UndefinedColumn { table: String, column: String },
    #[error("column {column} of relation {table} is of type {found}, not jsonb, json or text")]
    WrongColumnType {
        table: String,
        column: String,
        found: String,
    },
    #[error("relation {0} has no primary key")]
    NoPrimaryKey(String),
    #[error("row-level security is active on {0} for the current role: a rotation or verification must see every row")]
    RowSecurity(String),
    #[error("cannot re-encrypt row {pk} of {table}: {reason}")]
    Row {
        table: String,
        pk: String,
        reason: EnvelopeError,
    },
}
