//! Resolving, locking and checking the table and column a call works on.
//!
//! The table name is the one thing resolved with the caller's `search_path`, in C as
//! `to_regclass` does, before any of the extension's statements run. Everything after runs
//! [`Confined`]: under a fixed `search_path`, with every function of another role refused
//! ([`crate::table_code`]). Identifiers that end up in generated SQL come out of the catalogs
//! already quoted by Postgres; user input only ever travels as an SPI parameter.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::encoding::{self, DbText, GetText};
use crate::error::{required, Error};
use crate::statement::SafeSearchPath;
use crate::table::{ColumnType, TargetError};
use crate::table_code;

/// A resolved target: table, secret column and primary key, quoted for SQL.
#[derive(Debug, Clone)]
pub struct Target {
    pub oid: pg_sys::Oid,
    /// `"schema"."table"`, always schema-qualified so that the statements we build cannot be
    /// redirected by a search_path after resolution.
    pub relation: String,
    /// Quoted column name, and as stored in the catalog.
    pub column: String,
    pub column_name: String,
    pub column_type: ColumnType,
    /// Primary key columns as `(a, b)`, for messages.
    pub pk_columns: String,
    /// An expression giving the row's primary key values as text, `a, b`, through each type's
    /// output function (`format('%s')`): a cast could run another role's code.
    pub pk_value_expr: String,
    /// The schema the extension was created in (its entry points and the audit table), quoted.
    pub ext_schema: String,
    /// The schema of the extension's helpers: `credential_rotate` from 0.4.0 on; until a
    /// database's `ALTER EXTENSION … UPDATE`, the one its catalog still has them in.
    pub helper_schema: String,
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

/// What a call's own statements run inside, from the moment its table is resolved until it
/// returns: the fixed search_path and the guard against other roles' functions.
pub struct Confined {
    // Dropped in this order: the guard first, then the search_path.
    _code: table_code::Guard,
    _path: SafeSearchPath,
}

impl Confined {
    pub fn enter() -> Result<Confined, Error> {
        let path = SafeSearchPath::enter();
        Ok(Confined {
            _code: table_code::Guard::enter()?,
            _path: path,
        })
    }
}

/// The relation `name` denotes for the caller (its search_path, quoting and qualification as
/// `regclass` reads them), `None` when there is none; `42602` for a malformed name. Runs no
/// SQL, so no object on the caller's path can be picked for one of ours.
fn lookup(name: &str) -> Result<Option<pg_sys::Oid>, Error> {
    let bytes = encoding::from_utf8(name, "target_table")?;
    // SAFETY: a text datum made from the bytes; textToQualifiedNameList raises 42602 on a
    // malformed name (as to_regclass does on 15; 16 and later would return NULL instead) and
    // RangeVarGetRelidExtended with RVR_MISSING_OK returns InvalidOid for a missing relation.
    let oid = unsafe {
        let text = pg_sys::cstring_to_text_with_len(bytes.as_ptr().cast(), bytes.len() as i32);
        let names = pg_sys::textToQualifiedNameList(text);
        let range_var = pg_sys::makeRangeVarFromNameList(names);
        pg_sys::RangeVarGetRelidExtended(
            range_var,
            pg_sys::NoLock as pg_sys::LOCKMODE,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        )
    };
    Ok((oid != pg_sys::InvalidOid).then_some(oid))
}

/// `"schema"."table"` of relation `oid`, quoted by Postgres, and its relkind.
fn qualified_name(oid: pg_sys::Oid) -> Result<(String, u8), Error> {
    // SAFETY: lsyscache lookups of a relation this backend has just found; a NULL result (the
    // relation dropped meanwhile) is checked before use. The names are in the database encoding.
    let (name, relkind) = unsafe {
        let relname = pg_sys::get_rel_name(oid);
        let nspname = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(oid));
        if relname.is_null() || nspname.is_null() {
            return Err(Error::Internal(
                "relation vanished while being resolved".into(),
            ));
        }
        let quoted = pg_sys::quote_qualified_identifier(nspname, relname);
        (
            std::ffi::CStr::from_ptr(quoted).to_bytes().to_vec(),
            pg_sys::get_rel_relkind(oid) as u8,
        )
    };
    Ok((
        encoding::to_utf8(&name, "a relation name")?.into_owned(),
        relkind,
    ))
}

impl Target {
    /// Resolves `table` with the caller's search_path (schema-qualified and quoted names work,
    /// as with `regclass`), locks it in `lock` mode, checks it and `column`, and confines the
    /// rest of the call ([`Confined`]).
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
    ) -> Result<(Target, Confined), Error> {
        let Some(oid) = lookup(table)? else {
            return Err(TargetError::UndefinedTable(shown_name(table)).into());
        };
        let (relation, relkind) = qualified_name(oid)?;
        if relkind != b'r' && relkind != b'p' {
            return Err(TargetError::NotATable(relation).into());
        }
        match lock {
            // LOCK TABLE checks the caller's privileges for the mode and honours lock_timeout.
            // A qualified, quoted name and no expression: nothing in it resolves on a path.
            Lock::ShareRowExclusive => {
                client.update(
                    &encoding::sql(&format!(
                        "LOCK TABLE {relation} IN SHARE ROW EXCLUSIVE MODE"
                    ))?,
                    None,
                    &[],
                )?;
            }
            // Reading must work on a hot standby, where an SPI utility statement cannot run
            // (pgrx assigns a transaction id for it): take the lock any SELECT takes, directly,
            // and only for a role that may read the table, so that nobody can hold a lock on a
            // table they cannot read. Without the privilege the scan reports it as usual.
            Lock::AccessShare => {
                // SAFETY: a privilege check and a lock of a valid relation OID; LockRelationOid
                // raises on lock_timeout.
                unsafe {
                    let may_read = pg_sys::pg_class_aclcheck(
                        oid,
                        pg_sys::GetUserId(),
                        pg_sys::ACL_SELECT as _,
                    ) == pg_sys::AclResult::ACLCHECK_OK;
                    if may_read {
                        pg_sys::LockRelationOid(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
                    }
                }
            }
        }
        if lookup(table)? != Some(oid) || qualified_name(oid)?.0 != relation {
            return Err(Error::ConcurrentChange(relation));
        }
        let confined = Confined::enter()?;

        let rel = client
            .select(
                "SELECT c.reltuples::pg_catalog.float8, pg_catalog.row_security_active(c.oid)
                   FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[oid.into()],
            )?
            .first();
        if rel.is_empty() {
            return Err(Error::ConcurrentChange(relation));
        }
        // -1 until the table was first vacuumed or analyzed; only used for progress messages.
        let estimated_rows = rel.get::<f64>(1)?.filter(|n| *n > 0.0).map(|n| n as i64);
        // A policy would silently filter the rows this role sees: a rotation would leave the
        // hidden rows under the old key, a verification would count only some. Checked under
        // the lock: enabling row-level security or adding a policy needs a conflicting lock.
        if rel.get::<bool>(2)? != Some(false) {
            return Err(TargetError::RowSecurity(relation).into());
        }

        let (type_oid, quoted, column_name) = column_type(client, oid, &relation, column)?;
        let Some(column_type) = ColumnType::of_oid(type_oid.to_u32()) else {
            return Err(TargetError::WrongColumnType {
                table: relation,
                column: quoted,
                found: type_name(client, type_oid)?,
            }
            .into());
        };

        let pk: Vec<String> = client
            .select(
                "SELECT pg_catalog.format('%I', a.attname)
                   FROM pg_catalog.pg_index i
                   CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord)
                   JOIN pg_catalog.pg_attribute a
                     ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) k.attnum
                  WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary
                  ORDER BY k.ord",
                None,
                &[oid.into()],
            )?
            .map(|row| row.get_text(1).map(Option::unwrap_or_default))
            .collect::<Result<_, _>>()?;
        if pk.is_empty() {
            return Err(TargetError::NoPrimaryKey(relation).into());
        }
        let pk_columns = format!("({})", pk.join(", "));
        let pk_value_expr = format!(
            "pg_catalog.format('{}', {})",
            vec!["%s"; pk.len()].join(", "),
            pk.join(", ")
        );

        let schemas = client
            .select(
                "SELECT pg_catalog.format('%I', n.nspname),
                        CASE WHEN EXISTS (
                                 SELECT FROM pg_catalog.pg_depend d
                                   JOIN pg_catalog.pg_namespace s ON s.oid OPERATOR(pg_catalog.=) d.objid
                                  WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass::pg_catalog.oid
                                    AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid
                                    AND d.refobjid OPERATOR(pg_catalog.=) e.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'
                                    AND s.nspname OPERATOR(pg_catalog.=) $1)
                             THEN $1 ELSE pg_catalog.format('%I', n.nspname) END
                   FROM pg_catalog.pg_extension e
                   JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
                  WHERE e.extname OPERATOR(pg_catalog.=) 'credential_rotate'",
                Some(1),
                &[crate::statement::INTERNAL.into()],
            )?
            .first();
        let (Some(ext_schema), Some(helper_schema)) = (schemas.get_text(1)?, schemas.get_text(2)?)
        else {
            return Err(Error::Internal(
                "extension credential_rotate is not installed".into(),
            ));
        };

        Ok((
            Target {
                oid,
                relation,
                column: quoted,
                column_name,
                column_type,
                pk_columns,
                pk_value_expr,
                ext_schema,
                helper_schema,
                estimated_rows,
            },
            confined,
        ))
    }

    /// Checks that `column` is a timestamp column of this table and returns it quoted.
    pub fn timestamp_column(&self, client: &SpiClient<'_>, column: &str) -> Result<String, Error> {
        let (found, quoted, _) = column_type(client, self.oid, &self.relation, column)?;
        if found != pg_sys::TIMESTAMPTZOID && found != pg_sys::TIMESTAMPOID {
            return Err(Error::WrongTimestampType {
                table: self.relation.clone(),
                column: quoted,
                found: type_name(client, found)?,
            });
        }
        Ok(quoted)
    }

    /// The primary key of the row at (`tableoid`, `ctid`), as `(id)=(value)`, for messages.
    /// Only used on the error path, so the happy path never pays for formatting keys.
    pub fn describe_row(&self, tableoid: pg_sys::Oid, ctid: pg_sys::ItemPointerData) -> String {
        let query = format!(
            "SELECT {} FROM {} WHERE tableoid OPERATOR(pg_catalog.=) $1 AND ctid OPERATOR(pg_catalog.=) $2",
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

/// The type OID, quoted name and name of a live column.
fn column_type(
    client: &SpiClient<'_>,
    oid: pg_sys::Oid,
    relation: &str,
    column: &str,
) -> Result<(pg_sys::Oid, String, String), Error> {
    let row = client
        .select(
            "SELECT a.atttypid, pg_catalog.format('%I', a.attname), a.attname::pg_catalog.text
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2::pg_catalog.name
                AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped",
            Some(1),
            &[oid.into(), encoding::param(column)?],
        )?
        .first();
    if row.is_empty() {
        return Err(TargetError::UndefinedColumn {
            table: relation.to_owned(),
            column: shown_name(column),
        }
        .into());
    }
    match (
        row.get::<pg_sys::Oid>(1)?,
        row.get_text(2)?,
        row.get_text(3)?,
    ) {
        (Some(ty), Some(quoted), Some(name)) => Ok((ty, quoted, name)),
        _ => Err(Error::Internal("pg_attribute row with NULL fields".into())),
    }
}

/// A type as `format_type` prints it, for messages.
fn type_name(client: &SpiClient<'_>, oid: pg_sys::Oid) -> Result<String, Error> {
    Ok(client
        .select(
            "SELECT pg_catalog.format_type($1, NULL)",
            Some(1),
            &[oid.into()],
        )?
        .first()
        .get_text(1)?
        .unwrap_or_default())
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
