//! The statements a call runs over its target, built from the names the catalogs quoted (see
//! [`crate::target`]): a rotation's UPDATE (or a dry run's count), and the scans of
//! verification and census. No key and no caller's text ever goes into them.

use crate::target::{ColumnType, Target};

impl Target {
    /// A call of the per-row helper `name` of the extension on the secret column, after
    /// `leading` arguments: jsonb columns are read in their binary form (`name_jsonb`), json
    /// and text columns as text.
    fn row_helper(&self, name: &str, leading: &str) -> String {
        let (ext, col) = (&self.ext_schema, &self.column);
        if self.column_type == ColumnType::Jsonb {
            format!("{ext}.{name}_jsonb({leading}{col})")
        } else {
            format!("{ext}.{name}({leading}{col}::pg_catalog.text)")
        }
    }

    /// The one statement of a rotation. Its qual classifies (and, unless dry, re-seals) each
    /// row; its target list takes the re-sealed value. With `ranged`, only the rows stored in
    /// heap blocks `[$1, $2)` (given as tids); the range goes first so that the planner picks a
    /// TID range scan. `touch` names a timestamp column set to `now()` on every rewritten row.
    pub fn rotation_statement(&self, dry_run: bool, touch: Option<&str>, ranged: bool) -> String {
        let range = if ranged {
            "ctid >= $1::pg_catalog.tid AND ctid < $2::pg_catalog.tid AND "
        } else {
            ""
        };
        let qual = self.row_helper("_credential_reencrypt_row", "tableoid, ctid, ");
        let (rel, ext, col) = (&self.relation, &self.ext_schema, &self.column);
        if dry_run {
            return format!("SELECT pg_catalog.count(*) FROM {rel} WHERE {range}{qual}");
        }
        let touch = touch
            .map(|c| format!(", {c} = pg_catalog.now()"))
            .unwrap_or_default();
        // The stored jsonb is passed again so that only the re-sealed fields are spliced into
        // it; a text or json column gets the whole re-sealed envelope, cast back to its type.
        let value = if self.column_type == ColumnType::Jsonb {
            format!("{ext}._credential_reencrypt_take_jsonb(ctid, {col})")
        } else {
            format!(
                "{ext}._credential_reencrypt_take(ctid)::{ty}",
                ty = self.column_type.sql()
            )
        };
        format!(
            "UPDATE {rel} SET {col} = {value}{touch}
                      WHERE {range}{qual}"
        )
    }

    /// The per-row status of a verification: `empty`, `readable`, `not_readable` or a reason.
    pub fn status_expr(&self) -> String {
        self.row_helper("_credential_status", "")
    }

    /// `credential_verify`'s one scan: the rows of each status.
    pub fn verify_counts_statement(&self) -> String {
        format!(
            "SELECT count(*) FILTER (WHERE s = 'readable'),
                            count(*) FILTER (WHERE s = 'not_readable'),
                            count(*) FILTER (WHERE s = 'empty'),
                            count(*) FILTER (WHERE s NOT IN ('readable', 'not_readable', 'empty'))
                       FROM (SELECT {status} AS s FROM {rel}) AS statuses",
            status = self.status_expr(),
            rel = self.relation,
        )
    }

    /// `credential_verify_rows`'s scan: each row that does not open, by primary key (`$1`
    /// names the key columns), with the reason.
    pub fn verify_rows_statement(&self) -> String {
        format!(
            "SELECT $1 || '=(' || pk || ')',
                        CASE s WHEN 'not_readable' THEN 'the envelope does not open with the key'
                               ELSE s END
                   FROM (SELECT {pk} AS pk, {status} AS s FROM {rel}) AS statuses
                  WHERE s NOT IN ('readable', 'empty')
                  ORDER BY pk",
            pk = self.pk_value_expr,
            status = self.status_expr(),
            rel = self.relation,
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
