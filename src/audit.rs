//! The audit trail: every rotation but a dry run appends one row to `credential_rotate_audit`
//! in the caller's transaction (committed or rolled back with the rotation), naming the keys by
//! their fingerprints, never by a key.
//!
//! The rotation hands its record over through backend-local state ([`call::set_pending_audit`])
//! to the SECURITY DEFINER `_credential_audit_append`, which writes it: rotation roles need
//! no privilege on the audit table, and a role allowed to call the append cannot write a
//! record of its own making.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::call::{self, AuditRecord, Counts};
use crate::encoding::{self, GetText};
use crate::error::{Error, OrReport};
use crate::target::Target;

/// Records the rotation of `target` that has just finished: hands the record over and has
/// `_credential_audit_append` write it. `opened_by` pairs each old key's fingerprint with the
/// rows it opened.
pub fn append(
    client: &mut SpiClient<'_>,
    target: &Target,
    counts: Counts,
    opened_by: &[(String, i64)],
    old_fingerprints: &[String],
    new_fingerprint: String,
) -> Result<(), Error> {
    let rotated_by = client
        .select("SELECT current_user::pg_catalog.text", Some(1), &[])?
        .first()
        .get_text(1)?
        .unwrap_or_default();
    let _pending = call::set_pending_audit(AuditRecord {
        ext_schema: target.ext_schema.clone(),
        rotated_by,
        target_table: target.relation.clone(),
        secret_column: target.column.clone(),
        counts,
        opened_by: opened_by.to_vec(),
        old_fingerprint: old_fingerprints.join(","),
        new_fingerprint,
    });
    client.update(
        &encoding::sql(&format!(
            "SELECT {}._credential_audit_append()",
            target.ext_schema
        ))?,
        None,
        &[],
    )?;
    Ok(())
}

/// Appends the audit row of the rotation that has just finished in this backend; refuses to
/// do anything else. Runs as the extension's owner so that rotation roles need no privilege on
/// the audit table. Executable by PUBLIC: without a rotation of the same backend waiting for
/// it, in the same (sub)transaction, it only raises.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn _credential_audit_append() -> bool {
    let record = call::take_pending_audit()
        .ok_or(Error::NotInCall("_credential_audit_append"))
        .or_report();
    let rows_by_old_key = serde_json::Value::Object(
        record
            .opened_by
            .iter()
            .map(|(fingerprint, rows)| (fingerprint.clone(), (*rows).into()))
            .collect(),
    )
    .to_string();
    // A database still at an earlier version (the library is installed before ALTER EXTENSION
    // UPDATE runs) has no rows_by_old_key column: its rotations are audited without it.
    let by_key_column = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid
                          JOIN pg_catalog.pg_extension e ON e.extnamespace OPERATOR(pg_catalog.=) c.relnamespace
                         WHERE e.extname OPERATOR(pg_catalog.=) 'credential_rotate'
                           AND c.relname OPERATOR(pg_catalog.=) 'credential_rotate_audit'
                           AND a.attname OPERATOR(pg_catalog.=) 'rows_by_old_key' AND NOT a.attisdropped)",
    )
    .map_err(Error::from)
    .or_report()
    .unwrap_or(false);
    let (by_key_name, by_key_value) = if by_key_column {
        (", rows_by_old_key", ", $10::pg_catalog.jsonb")
    } else {
        ("", "")
    };
    // Names in the database encoding: the statement text and the three name parameters.
    let (statement, rotated_by, target_table, secret_column) = (|| -> Result<_, Error> {
        Ok((
            encoding::sql(&format!(
                "INSERT INTO {}.credential_rotate_audit
                   (rotated_by, target_table, secret_column, scanned, updated, already_current,
                    empty, old_key_fingerprint, new_key_fingerprint{by_key_name})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9{by_key_value})",
                record.ext_schema
            ))?,
            encoding::param(&record.rotated_by)?,
            encoding::param(&record.target_table)?,
            encoding::param(&record.secret_column)?,
        ))
    })()
    .or_report();
    Spi::connect_mut(|client| {
        let mut args = vec![
            rotated_by,
            target_table,
            secret_column,
            record.counts.scanned.into(),
            record.counts.updated.into(),
            record.counts.already_current.into(),
            record.counts.empty.into(),
            record.old_fingerprint.as_str().into(),
            record.new_fingerprint.as_str().into(),
        ];
        if by_key_column {
            args.push(rows_by_old_key.as_str().into());
        }
        client.update(&statement, None, &args).map(|_| true)
    })
    .map_err(Error::from)
    .or_report()
}
