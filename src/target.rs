//! Resolving the table and column a call works on.
//!
//! Every identifier that ends up in generated SQL comes out of the catalogs already quoted by
//! Postgres (`pg_catalog.format('%I')`); user input only ever travels as an SPI parameter.
//! Every function called is schema-qualified: an unqualified `format` could resolve to a
//! better-matching function on the caller's search_path and inject SQL.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::encoding::{self, DbText, GetText};
use crate::error::{required, Error};

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
        check_name_syntax(table);
        let rel = client
            .select(
                "SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), c.relkind::pg_catalog.text
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = pg_catalog.to_regclass($1)",
                Some(1),
                &[encoding::param(table)?],
            )?
            .first();
        if rel.is_empty() {
            return Err(Error::UndefinedTable(shown_name(table)));
        }
        let (oid, relation, relkind) = (
            rel.get::<pg_sys::Oid>(1)?,
            rel.get_text(2)?,
            rel.get_text(3)?,
        );
        let (Some(oid), Some(relation), Some(relkind)) = (oid, relation, relkind) else {
            return Err(Error::Internal("pg_class row with NULL fields".into()));
        };
        if relkind != "r" && relkind != "p" {
            return Err(Error::NotATable(relation));
        }
        match lock {
            // LOCK TABLE checks the caller's privileges for the mode and honours lock_timeout.
            Lock::ShareRowExclusive => {
                client.update(
                    &encoding::sql(&format!("LOCK TABLE {relation} IN {} MODE", lock.sql()))?,
                    None,
                    &[],
                )?;
            }
            // Reading must work on a hot standby, where an SPI utility statement cannot run
            // (pgrx assigns a transaction id for it): take the lock any SELECT takes, directly,
            // and only for a role that may read the table, so that nobody can hold a lock on a
            // table they cannot read. Without the privilege the scan reports it as usual.
            Lock::AccessShare => {
                let may_read = client
                    .select(
                        "SELECT pg_catalog.has_table_privilege($1, 'SELECT')",
                        Some(1),
                        &[oid.into()],
                    )?
                    .first()
                    .get_one::<bool>()?;
                if may_read == Some(true) {
                    // SAFETY: a valid relation OID and lock mode; raises on lock_timeout.
                    unsafe {
                        pg_sys::LockRelationOid(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE)
                    };
                }
            }
        }
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
                &[
                    encoding::param(table)?,
                    oid.into(),
                    encoding::param(&relation)?,
                ],
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
            .first();
        let pk = (pk.get_text(1)?, pk.get_text(2)?);
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
            .get_text(1)?
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

    /// Refuses a rewrite of this table (and of its partitions or inheritance children) when it
    /// would run code that belongs to a role other than the caller: UPDATE triggers and their
    /// WHEN clauses, UPDATE rules, functions in index expressions and predicates, in
    /// constraints and in generated columns. Such code runs inside the rotation's statement and
    /// can read its text, keys included (`current_query()`). Policies are not listed: they run
    /// only for roles that row-level security applies to, and those are refused beforehand.
    /// Built-in functions are trusted. `credential_rotate.trust_table_code` accepts the code.
    pub fn refuse_foreign_code(&self, client: &SpiClient<'_>) -> Result<(), Error> {
        if crate::TRUST_TABLE_CODE.get() {
            return Ok(());
        }
        let found = client
            .select(
                "WITH RECURSIVE rels(oid) AS (
                     SELECT $1::pg_catalog.oid
                   UNION
                     SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN rels r ON i.inhparent = r.oid
                 ),
                 triggers AS (
                     SELECT t.oid, pg_catalog.format('trigger %I on %s', t.tgname, t.tgrelid::pg_catalog.regclass) AS what,
                            t.tgfoid
                       FROM pg_catalog.pg_trigger t JOIN rels r ON t.tgrelid = r.oid
                      WHERE NOT t.tgisinternal AND t.tgenabled <> 'D'
                        AND (t.tgtype::pg_catalog.int4 & 16) <> 0
                 ),
                 code(what, fn) AS (
                     SELECT what, tgfoid FROM triggers
                   UNION ALL
                     SELECT t.what, d.refobjid FROM triggers t
                       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass
                        AND d.objid = t.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                   UNION ALL
                     SELECT pg_catalog.format('index %s', x.indexrelid::pg_catalog.regclass), d.refobjid
                       FROM pg_catalog.pg_index x JOIN rels r ON x.indrelid = r.oid
                       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                        AND d.objid = x.indexrelid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                   UNION ALL
                     SELECT pg_catalog.format('constraint %I on %s', c.conname, c.conrelid::pg_catalog.regclass), d.refobjid
                       FROM pg_catalog.pg_constraint c JOIN rels r ON c.conrelid = r.oid
                       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass
                        AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                   UNION ALL
                     SELECT pg_catalog.format('generated column %I of %s', a.attname, a.attrelid::pg_catalog.regclass), d.refobjid
                       FROM pg_catalog.pg_attrdef ad JOIN rels r ON ad.adrelid = r.oid
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
                        AND a.attgenerated <> ''
                       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                        AND d.objid = ad.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                 ),
                 me AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user),
                 foreign_code(what) AS (
                     SELECT c.what || ' (' || p.oid::pg_catalog.regprocedure::pg_catalog.text
                            || ', owned by ' || pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(p.proowner)) || ')'
                       FROM code c JOIN pg_catalog.pg_proc p ON p.oid = c.fn
                      WHERE p.oid >= 16384 AND p.proowner <> (SELECT oid FROM me)
                   UNION
                     SELECT pg_catalog.format('rule %I on %s (owned by %I)', w.rulename,
                                              w.ev_class::pg_catalog.regclass, pg_catalog.pg_get_userbyid(cl.relowner))
                       FROM pg_catalog.pg_rewrite w JOIN rels r ON w.ev_class = r.oid
                       JOIN pg_catalog.pg_class cl ON cl.oid = w.ev_class
                      WHERE w.rulename <> '_RETURN' AND w.ev_type IN ('2', '*')
                        AND cl.relowner <> (SELECT oid FROM me)
                 )
                 SELECT pg_catalog.string_agg(what, '; ' ORDER BY what) FROM foreign_code",
                Some(1),
                &[self.oid.into()],
            )?
            .first()
            .get_text(1)?;
        match found {
            None => Ok(()),
            Some(code) => Err(Error::ForeignTableCode {
                table: self.relation.clone(),
                code,
            }),
        }
    }

    /// The primary key of the row at (`tableoid`, `ctid`), as `(id)=(value)`, for messages.
    /// Only used on the error path, so the happy path never pays for formatting keys.
    pub fn describe_row(&self, tableoid: pg_sys::Oid, ctid: pg_sys::ItemPointerData) -> String {
        let query = format!(
            "SELECT {} FROM {} WHERE tableoid = $1 AND ctid = $2",
            self.pk_value_expr, self.relation
        );
        let value = Spi::connect(|client| -> Result<Option<String>, Error> {
            client
                .select(
                    &encoding::sql(&query)?,
                    Some(1),
                    &[tableoid.into(), ctid.into()],
                )?
                .first()
                .get_text(1)
        });
        match value {
            Ok(Some(v)) => format!("{}=({})", self.pk_columns, v),
            _ => format!("{}=(?)", self.pk_columns),
        }
    }
}

/// Raises Postgres' own `42602 invalid name syntax` for a malformed table name.
/// `to_regclass` raises it on PostgreSQL 15 but returns NULL from 16 on; checking first gives
/// the same answer on every version (and never a "does not exist" naming a malformed string).
fn check_name_syntax(name: &str) {
    let text = pgrx::rust_str_to_text_p(name);
    // SAFETY: a valid text datum; the call only parses it (pgrx turns its ERROR into a panic
    // that unwinds to the function's boundary).
    unsafe {
        pg_sys::textToQualifiedNameList(text.as_ptr().cast());
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
            &[oid.into(), encoding::param(column)?],
        )?
        .first();
    if row.is_empty() {
        return Err(Error::UndefinedColumn {
            table: relation.to_owned(),
            column: shown_name(column),
        });
    }
    match (row.get_text(1)?, row.get_text(2)?) {
        (Some(ty), Some(quoted)) => Ok((ty, quoted)),
        _ => Err(Error::Internal("pg_attribute row with NULL fields".into())),
    }
}

/// The `target_table` and `secret_column` arguments of a call, as UTF-8.
pub fn names(
    target_table: Option<DbText>,
    secret_column: Option<DbText>,
) -> Result<(String, String), Error> {
    let table = required(target_table, "target_table")?;
    let column = required(secret_column, "secret_column")?;
    Ok((
        table.to_utf8("target_table")?.into_owned(),
        column.to_utf8("secret_column")?.into_owned(),
    ))
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
