//! The statements a call runs over its target, built from the names the catalogs quoted (see
//! [`crate::target`]): a rotation's UPDATE (or a dry run's count), and the scans of
//! verification and census. No key and no caller's text ever goes into them.
//!
//! They run under a fixed `search_path` ([`SafeSearchPath`]) and name every operator with
//! `OPERATOR(pg_catalog.…)`, every function and type with its schema: an object another role
//! planted in a schema of the caller's `search_path` (a better-matching `=` for two types, a
//! `format`, a domain named `jsonb`) can never be picked in their place (CVE-2018-1058's class).

use std::ffi::c_int;

use pgrx::pg_sys;

use crate::table::ColumnType;
use crate::target::Target;

/// The schema of the extension's internal helpers (created with the extension, owned by it):
/// out of users' way, never on anybody's search_path, always named in full.
pub const INTERNAL: &str = "credential_rotate";

/// While alive, `search_path` is `pg_catalog, pg_temp`, as PostgreSQL 17 sets it for its own
/// maintenance commands: nothing resolves in a schema anybody else can create objects in, and
/// `pg_temp` comes last (it is never searched for functions or operators anyway). Entered once
/// the caller's table name is resolved, the one lookup that must use the caller's path.
///
/// Dropping it restores the caller's value. An error needs no restoring: the (sub)transaction
/// abort pops the GUC nesting level, and a Postgres call during unwinding could raise again.
pub struct SafeSearchPath {
    nest_level: c_int,
}

impl SafeSearchPath {
    pub fn enter() -> SafeSearchPath {
        // SAFETY: the same calls PostgreSQL makes for a function's SET clause
        // (fmgr_security_definer); setting search_path to a constant cannot fail.
        unsafe {
            let nest_level = pg_sys::NewGUCNestLevel();
            pg_sys::set_config_option(
                c"search_path".as_ptr(),
                c"pg_catalog, pg_temp".as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
            SafeSearchPath { nest_level }
        }
    }
}

impl Drop for SafeSearchPath {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // SAFETY: pops exactly the level entered above, as a function's SET clause does.
            unsafe { pg_sys::AtEOXact_GUC(true, self.nest_level) };
        }
    }
}

impl Target {
    /// A call of the per-row helper `name` of the extension on the secret column, after
    /// `leading` arguments: jsonb columns are read in their binary form (`name_jsonb`), json
    /// and text columns as text.
    fn row_helper(&self, name: &str, leading: &str) -> String {
        let (helpers, col) = (&self.helper_schema, &self.column);
        if self.column_type == ColumnType::Jsonb {
            format!("{helpers}.{name}_jsonb({leading}{col})")
        } else {
            format!("{helpers}.{name}({leading}{col}::pg_catalog.text)")
        }
    }

    /// The one statement of a rotation. Its qual classifies (and, unless dry, re-seals) each
    /// row; its target list takes the re-sealed value; its RETURNING list hands the value as
    /// stored (after any BEFORE trigger) to the receiver that checks it is the one written
    /// ([`crate::written`]), then the row's place for an error naming it. With `range`, only
    /// the rows from tid `range.0` up to `range.1`, which the planner reads with a TID range
    /// scan. `touch` names a timestamp column set to `now()` on every
    /// rewritten row.
    pub fn rotation_statement(
        &self,
        dry_run: bool,
        touch: Option<&str>,
        range: Option<(Tid, Tid)>,
    ) -> String {
        let range = match range {
            None => String::new(),
            Some((from, to)) => format!(
                "ctid OPERATOR(pg_catalog.>=) {} AND ctid OPERATOR(pg_catalog.<) {} AND ",
                from.literal(),
                to.literal()
            ),
        };
        let qual = self.row_helper("_credential_reencrypt_row", "tableoid, ctid, ");
        let (rel, helpers, col) = (&self.relation, &self.helper_schema, &self.column);
        if dry_run {
            return format!("SELECT pg_catalog.count(*) FROM {rel} WHERE {range}{qual}");
        }
        let touch = touch
            .map(|c| format!(", {c} = pg_catalog.now()"))
            .unwrap_or_default();
        // The stored jsonb is passed again so that only the re-sealed fields are spliced into
        // it; a text or json column gets the whole re-sealed envelope, cast back to its type.
        let value = if self.column_type == ColumnType::Jsonb {
            format!("{helpers}._credential_reencrypt_take_jsonb(ctid, {col})")
        } else {
            format!(
                "{helpers}._credential_reencrypt_take(ctid)::{ty}",
                ty = self.column_type.sql()
            )
        };
        format!(
            "UPDATE {rel} SET {col} = {value}{touch}
                      WHERE {range}{qual}
                  RETURNING {col}, tableoid, ctid"
        )
    }

    /// The per-row status of a verification, counted into the call: `NULL` when the row opens
    /// with the key or is empty, else `not_readable` or the reason it is malformed.
    pub fn status_expr(&self) -> String {
        self.row_helper("_credential_status", "")
    }

    /// `credential_verify`'s one scan: the helper counts each row into the call state; the
    /// count only drives the scan.
    pub fn verify_counts_statement(&self) -> String {
        format!(
            "SELECT pg_catalog.count({status}) FROM {rel}",
            status = self.status_expr(),
            rel = self.relation,
        )
    }

    /// `credential_verify_rows`'s scan: each row that does not open, by its primary key as
    /// text, with the reason, in the order of that text.
    pub fn verify_rows_statement(&self) -> String {
        format!(
            "SELECT pk, s
               FROM (SELECT {pk} AS pk, {status} AS s FROM {rel}) AS statuses
              WHERE s IS NOT NULL
              ORDER BY pk",
            pk = self.pk_value_expr,
            status = self.status_expr(),
            rel = self.relation,
        )
    }

    /// The tid of the row after the next `rows` rows from `from` (before `upper`, if any), in
    /// physical order: where a batch of the batched procedure ends. A TID range scan reads
    /// only those blocks; `ORDER BY ctid` sorts with tid's own btree order, no operator looked
    /// up by name.
    pub fn batch_end_statement(&self, from: Tid, upper: Tid, rows: i64) -> String {
        format!(
            "SELECT ctid FROM {rel}
              WHERE ctid OPERATOR(pg_catalog.>=) {from} AND ctid OPERATOR(pg_catalog.<) {upper}
              ORDER BY ctid OFFSET {rows} LIMIT 1",
            rel = self.relation,
            from = from.literal(),
            upper = upper.literal(),
        )
    }

    /// `credential_key_census`'s scan: the helper counts each row into the call state; the
    /// count only drives the scan.
    pub fn census_statement(&self) -> String {
        format!(
            "SELECT pg_catalog.count({helper}) FROM {rel}",
            helper = self.row_helper("_credential_census_status", ""),
            rel = self.relation
        )
    }
}

/// A heap tuple's place, `(block, offset)`: where a batch of `credential_reencrypt_batched`
/// starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tid {
    pub block: u32,
    pub offset: u16,
}

impl Tid {
    pub const START: Tid = Tid {
        block: 0,
        offset: 0,
    };

    /// As a SQL literal: two integers of ours, never text of the caller's.
    pub fn literal(self) -> String {
        format!("'({},{})'::pg_catalog.tid", self.block, self.offset)
    }
}

impl From<pg_sys::ItemPointerData> for Tid {
    fn from(t: pg_sys::ItemPointerData) -> Tid {
        let (block, offset) = pgrx::itemptr::item_pointer_get_both(t);
        Tid { block, offset }
    }
}

impl From<Tid> for pg_sys::ItemPointerData {
    fn from(t: Tid) -> pg_sys::ItemPointerData {
        let mut tid = pg_sys::ItemPointerData::default();
        pgrx::itemptr::item_pointer_set_all(&mut tid, t.block, t.offset);
        tid
    }
}
