//! Resolving the table and column a call works on.
//!
//! Every identifier that ends up in generated SQL comes out of the catalogs already quoted by
//! Postgres (`pg_catalog.format('%I')`); user input only ever travels as an SPI parameter.
//! Every function called is schema-qualified: an unqualified `format` could resolve to a
//! better-matching function on the caller's search_path and inject SQL.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::error::Error;

/// The type of the secret column; the value is cast to text to be read and back to this type
/// to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Jsonb,
    Json,
    Text,
}

impl ColumnType {
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Jsonb => "pg_catalog.jsonb",
            ColumnType::Json => "pg_catalog.json",
            ColumnType::Text => "pg_catalog.text",
        }
    }
}

/// A resolved target: table, secret column and primary key, quoted for SQL.
#[derive(Debug, Clone)]
pub struct Target {
    pub oid: pg_sys::Oid,
    /// `"schema"."table"`, always schema-qualified so that the statements we build cannot be
    /// redirected by the caller's search_path after resolution.
    pub relation: String,
    /// Quoted column name.
    pub column: String,
    pub column_type: ColumnType,
    /// Primary key columns as `(a, b)`, for messages.
    pub pk_columns: String,
    /// An expression giving the row's primary key values as text, `a::text || ', ' || …`.
    pub pk_value_expr: String,
    /// The extension's own schema, quoted, to call its helpers without search_path lookups.
    pub ext_schema: String,
    /// pg_class.reltuples, when the table has been analyzed.
    pub estimated_rows: Option<i64>,
}

/// The lock a call holds on its table until the end of the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Reading only (verification, dry run): what any SELECT takes, blocking only DDL.
    AccessShare,
    /// Rewriting: readers go on; writers wait for our commit, so no row can be written under
    /// the old key behind the scan; a second rotation waits for the first.
    ShareRowExclusive,
}

impl Lock {
    fn sql(self) -> &'static str {
        match self {
            Lock::AccessShare => "ACCESS SHARE",
            Lock::ShareRowExclusive => "SHARE ROW EXCLUSIVE",
        }
    }
}

impl Target {
    /// Resolves `table` with the caller's search_path (schema-qualified and quoted names work,
    /// as with `regclass`), locks it in `lock` mode, and checks `column`.
    ///
    /// The table is locked by the name resolved from its OID, then the caller's name is
    /// resolved again: if a concurrent rename or a new table in an earlier search_path schema
    /// moved the name while we waited for the lock, the call is refused rather than resolving
    /// one table and working on another. Everything else is read under the lock.
    pub fn resolve(
        client: &mut SpiClient<'_>,
        table: &str,
        column: &str,
        lock: Lock,
    ) -> Result<Target, Error> {
        let rel = client
            .select(
                "SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), c.relkind::pg_catalog.text
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = pg_catalog.to_regclass($1)",
                Some(1),
                &[table.into()],
            )?
            .first();
        if rel.is_empty() {
            return Err(Error::UndefinedTable(shown_name(table)));
        }
        let (oid, relation, relkind) = rel.get_three::<pg_sys::Oid, String, String>()?;
        let (Some(oid), Some(relation), Some(relkind)) = (oid, relation, relkind) else {
            return Err(Error::Internal("pg_class row with NULL fields".into()));
        };
        if relkind != "r" && relkind != "p" {
            return Err(Error::NotATable(relation));
        }
        // LOCK TABLE checks the caller's privileges for the mode and honours lock_timeout.
        client.update(
            &format!("LOCK TABLE {relation} IN {} MODE", lock.sql()),
            None,
            &[],
        )?;
        let still = client
            .select(
                "SELECT pg_catalog.to_regclass($1) = c.oid
                        AND pg_catalog.format('%I.%I', n.nspname, c.relname) = $3,
                        c.reltuples::float8,
                        pg_catalog.row_security_active(c.oid)
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = $2",
                Some(1),
                &[table.into(), oid.into(), relation.as_str().into()],
            )?
            .first();
        if still.is_empty() || still.get::<bool>(1)? != Some(true) {
            return Err(Error::ConcurrentChange(relation));
        }
        // -1 until the table was first vacuumed or analyzed; only used for progress messages.
        let estimated_rows = still.get::<f64>(2)?.filter(|n| *n > 0.0).map(|n| n as i64);
        // A policy would silently filter the rows this role sees: a rotation would leave the
        // hidden rows under the old key, a verification would count only some. Checked under
        // the lock: enabling row-level security or adding a policy needs a conflicting lock.
        if still.get::<bool>(3)? != Some(false) {
            return Err(Error::RowSecurity(relation));
        }

        let (column_type, quoted) = column_type(client, oid, &relation, column)?;
        let column_type = match column_type.as_str() {
            "jsonb" => ColumnType::Jsonb,
            "json" => ColumnType::Json,
            "text" => ColumnType::Text,
            _ => {
                return Err(Error::WrongColumnType {
                    table: relation,
                    column: quoted,
                    found: column_type,
                })
            }
        };

        let pk = client
            .select(
                "SELECT '(' || pg_catalog.string_agg(pg_catalog.format('%I', a.attname), ', ' ORDER BY k.ord) || ')',
                        pg_catalog.string_agg(pg_catalog.format('%I::pg_catalog.text', a.attname), ' || '', '' || '
                                   ORDER BY k.ord)
                   FROM pg_catalog.pg_index i
                   CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord)
                   JOIN pg_catalog.pg_attribute a
                     ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                  WHERE i.indrelid = $1 AND i.indisprimary",
                Some(1),
                &[oid.into()],
            )?
            .first()
            .get_two::<String, String>()?;
        let (Some(pk_columns), Some(pk_value_expr)) = pk else {
            return Err(Error::NoPrimaryKey(relation));
        };

        let ext_schema = client
            .select(
                "SELECT pg_catalog.format('%I', n.nspname)
                   FROM pg_catalog.pg_extension e
                   JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                  WHERE e.extname = 'credential_rotate'",
                Some(1),
                &[],
            )?
            .first()
            .get_one::<String>()?
            .ok_or_else(|| {
                Error::Internal("extension credential_rotate is not installed".into())
            })?;

        Ok(Target {
            oid,
            relation,
            column: quoted,
            column_type,
            pk_columns,
            pk_value_expr,
            ext_schema,
            estimated_rows,
        })
    }

    /// Checks that `column` is a timestamp column of this table and returns it quoted.
    pub fn timestamp_column(&self, client: &SpiClient<'_>, column: &str) -> Result<String, Error> {
        let (found, quoted) = column_type(client, self.oid, &self.relation, column)?;
        if found != "timestamp with time zone" && found != "timestamp without time zone" {
            return Err(Error::WrongTimestampType {
                table: self.relation.clone(),
                column: quoted,
                found,
            });
        }
        Ok(quoted)
    }

    /// The primary key of the row at (`tableoid`, `ctid`), as `(id)=(value)`, for messages.
    /// Only used on the error path, so the happy path never pays for formatting keys.
    pub fn describe_row(&self, tableoid: pg_sys::Oid, ctid: pg_sys::ItemPointerData) -> String {
        let query = format!(
            "SELECT {} FROM {} WHERE tableoid = $1 AND ctid = $2",
            self.pk_value_expr, self.relation
        );
        let value = Spi::connect(|client| {
            client
                .select(&query, Some(1), &[tableoid.into(), ctid.into()])?
                .first()
                .get_one::<String>()
        });
        match value {
            Ok(Some(v)) => format!("{}=({})", self.pk_columns, v),
            _ => format!("{}=(?)", self.pk_columns),
        }
    }
}

/// The type (as `format_type` prints it) and quoted name of a live column.
fn column_type(
    client: &SpiClient<'_>,
    oid: pg_sys::Oid,
    relation: &str,
    column: &str,
) -> Result<(String, String), Error> {
    let row = client
        .select(
            "SELECT pg_catalog.format_type(a.atttypid, NULL), pg_catalog.format('%I', a.attname)
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            Some(1),
            &[oid.into(), column.into()],
        )?
        .first();
    if row.is_empty() {
        return Err(Error::UndefinedColumn {
            table: relation.to_owned(),
            column: shown_name(column),
        });
    }
    match row.get_two::<String, String>()? {
        (Some(ty), Some(quoted)) => Ok((ty, quoted)),
        _ => Err(Error::Internal("pg_attribute row with NULL fields".into())),
    }
}

/// A name the caller passed, as it may appear in an error message: unless it parses as a key.
/// A key given in the wrong argument position must not be echoed back (and logged).
fn shown_name(name: &str) -> String {
    if crate::key::Key::parse(name).is_ok() {
        "<a value that looks like a key, not shown>".to_owned()
    } else {
        name.to_owned()
    }
}
