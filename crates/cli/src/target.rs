//! Resolving, locking and checking the table and column of a client-mode run, as the
//! extension's `target.rs` does on the server.
//!
//! The server may hold objects planted by other roles: every identifier that goes into a
//! statement comes back from the catalogs already quoted by the server
//! (`pg_catalog.format('%I')`), every function and operator in the statements is qualified
//! with `pg_catalog`, and the caller's names only ever travel as bound parameters.

use postgres::types::{FromSql, IsNull, ToSql, Type};
use postgres::Transaction;

use crate::error::{Error, Result};
use credential_rotate_core::table::{ColumnType, TargetError};

/// The lock a run holds on its table until COMMIT or ROLLBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Reading only (dry run, verify, census): what any SELECT takes.
    AccessShare,
    /// Rewriting: readers go on; writers wait for COMMIT, so no row can be written under the
    /// old key behind the scan; a second rotation waits for the first. The extension's lock.
    ShareRowExclusive,
}

/// A resolved table and column, names quoted by the server.
#[derive(Debug, Clone)]
pub struct Target {
    /// `"schema"."table"`, schema-qualified so that no search_path can redirect it.
    pub relation: String,
    /// The quoted column name.
    pub column: String,
    pub column_type: ColumnType,
    /// The primary key columns as `(a, b)`, for messages.
    pub pk_columns: String,
    /// The row's primary key values as text, `a::pg_catalog.text || ', ' || …`.
    pub pk_value_expr: String,
}

impl Target {
    /// Resolves `table` (a name as `regclass` reads it, with the session's search_path), takes
    /// `lock` on it, resolves the name again (a rename or a new table earlier in the
    /// search_path while the lock was awaited is refused), refuses row-level security, and
    /// checks `column` and the primary key.
    pub fn resolve(
        tx: &mut Transaction<'_>,
        table: &str,
        column: &str,
        lock: Lock,
    ) -> Result<Target> {
        let rel = tx.query_opt(
            "SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), c.relkind::pg_catalog.text
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
              WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1::pg_catalog.text)",
            &[&table],
        )?;
        let Some(rel) = rel else {
            return Err(TargetError::UndefinedTable(table.to_owned()).into());
        };
        let (oid, relation, relkind): (u32, String, String) =
            (rel.try_get(0)?, rel.try_get(1)?, rel.try_get(2)?);
        if relkind != "r" && relkind != "p" {
            return Err(TargetError::NotATable(relation).into());
        }
        if lock == Lock::ShareRowExclusive {
            // LOCK TABLE checks the role's privileges for the mode and honours lock_timeout.
            tx.batch_execute(&format!(
                "LOCK TABLE {relation} IN SHARE ROW EXCLUSIVE MODE"
            ))?;
        }
        let still = tx.query_one(
            "SELECT pg_catalog.to_regclass($1::pg_catalog.text) OPERATOR(pg_catalog.=) c.oid
                    AND pg_catalog.format('%I.%I', n.nspname, c.relname) OPERATOR(pg_catalog.=) $3::pg_catalog.text,
                    pg_catalog.row_security_active(c.oid)
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
              WHERE c.oid OPERATOR(pg_catalog.=) $2::pg_catalog.oid",
            &[&table, &oid, &relation],
        )?;
        if still.try_get::<_, Option<bool>>(0)? != Some(true) {
            return Err(Error::ConcurrentChange(relation));
        }
        // A policy would silently hide rows: they would stay under the old key, and the
        // counts would be short. Checked under the lock, which enabling RLS must wait for.
        if still.try_get::<_, Option<bool>>(1)? != Some(false) {
            return Err(TargetError::RowSecurity(relation).into());
        }

        let col = tx.query_opt(
            "SELECT a.atttypid, pg_catalog.format_type(a.atttypid, NULL), pg_catalog.format('%I', a.attname)
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid OPERATOR(pg_catalog.=) $1::pg_catalog.oid
                AND a.attname OPERATOR(pg_catalog.=) $2::pg_catalog.text
                AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped",
            &[&oid, &column],
        )?;
        let Some(col) = col else {
            return Err(TargetError::UndefinedColumn {
                table: relation,
                column: column.to_owned(),
            }
            .into());
        };
        let (type_oid, type_name, quoted): (u32, String, String) =
            (col.try_get(0)?, col.try_get(1)?, col.try_get(2)?);
        let Some(column_type) = ColumnType::of_oid(type_oid) else {
            return Err(TargetError::WrongColumnType {
                table: relation,
                column: quoted,
                found: type_name,
            }
            .into());
        };

        let pk = tx.query_one(
            "SELECT '(' OPERATOR(pg_catalog.||) pg_catalog.string_agg(pg_catalog.format('%I', a.attname), ', ' ORDER BY k.ord)
                        OPERATOR(pg_catalog.||) ')',
                    pg_catalog.string_agg(pg_catalog.format('%I::pg_catalog.text', a.attname),
                                          ' OPERATOR(pg_catalog.||) '', '' OPERATOR(pg_catalog.||) ' ORDER BY k.ord)
               FROM pg_catalog.pg_index i
               CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_catalog.pg_attribute a
                 ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) k.attnum
              WHERE i.indrelid OPERATOR(pg_catalog.=) $1::pg_catalog.oid AND i.indisprimary",
            &[&oid],
        )?;
        let (Some(pk_columns), Some(pk_value_expr)) = (pk.try_get(0)?, pk.try_get(1)?) else {
            return Err(TargetError::NoPrimaryKey(relation).into());
        };
        Ok(Target {
            relation,
            column: quoted,
            column_type,
            pk_columns,
            pk_value_expr,
        })
    }

    /// The primary key of a row, `(id)=(42)`, for a message; `(id)=(?)` if it cannot be read.
    pub fn describe_row(&self, tx: &mut Transaction<'_>, row: RowId) -> String {
        let query = format!(
            "SELECT {} FROM {} WHERE tableoid OPERATOR(pg_catalog.=) $1::pg_catalog.oid
                                  AND ctid OPERATOR(pg_catalog.=) $2::pg_catalog.tid",
            self.pk_value_expr, self.relation
        );
        match tx.query_opt(&query, &[&row.table, &row.tid]) {
            Ok(Some(found)) => match found.try_get::<_, Option<String>>(0) {
                Ok(Some(value)) => format!("{}=({value})", self.pk_columns),
                _ => format!("{}=(?)", self.pk_columns),
            },
            _ => format!("{}=(?)", self.pk_columns),
        }
    }
}

/// Where a row is stored: its table (a partition or child of the target, or the target) and
/// its tuple id. Stable for the whole run: writers wait for the run's lock, and VACUUM FULL or
/// CLUSTER would need a stronger one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowId {
    pub table: u32,
    pub tid: Tid,
}

/// A `tid` (block, offset), in its binary wire form: 4-byte block number, 2-byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tid {
    pub block: u32,
    pub offset: u16,
}

impl<'a> FromSql<'a> for Tid {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Tid, Box<dyn std::error::Error + Sync + Send>> {
        match raw {
            [b0, b1, b2, b3, o0, o1] => Ok(Tid {
                block: u32::from_be_bytes([*b0, *b1, *b2, *b3]),
                offset: u16::from_be_bytes([*o0, *o1]),
            }),
            _ => Err(format!("a tid of {} bytes, not 6", raw.len()).into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TID
    }
}

impl ToSql for Tid {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.block.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TID
    }

    postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tid_round_trips_its_wire_form() {
        let tid = Tid {
            block: 0x0102_0304,
            offset: 0x0506,
        };
        let mut out = bytes::BytesMut::new();
        tid.to_sql(&Type::TID, &mut out).unwrap();
        assert_eq!(&out[..], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(Tid::from_sql(&Type::TID, &out).unwrap(), tid);
        assert!(Tid::from_sql(&Type::TID, &out[..5]).is_err());
        assert!(!<Tid as ToSql>::accepts(&Type::TEXT));
    }
}
