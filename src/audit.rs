//! The audit trail: every rotation but a dry run appends one row to `credential_rotate_audit`
//! in the caller's transaction (committed or rolled back with the rotation), naming the keys by
//! their fingerprints, never by a key.
//!
//! The rotation hands its record over through backend-local state ([`append`]) to the
//! SECURITY DEFINER `_credential_audit_append`, which writes it: rotation roles need no
//! privilege on the audit table, and a role allowed to call the append cannot write a record
//! of its own making. The record never outlives the (sub)transaction of the rotation that made
//! it: the guard withdraws it on return or unwinding, the abort callbacks ([`crate::call`]) on
//! any other path.

use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::call::{self, Counts};
use crate::encoding::{self, GetText};
use crate::error::{Error, OrReport};
use crate::target::Target;

/// What the audit row of a finished rotation records.
struct AuditRecord {
    ext_schema: String,
    rotated_by: String,
    target_table: String,
    secret_column: String,
    counts: Counts,
    /// Each old key's fingerprint and the rows it opened, in the order the keys were given.
    opened_by: Vec<(String, i64)>,
    old_fingerprint: String,
    new_fingerprint: String,
}

struct Pending {
    record: AuditRecord,
    subxact: pg_sys::SubTransactionId,
}

thread_local! {
    static PENDING: RefCell<Option<Pending>> = const { RefCell::new(None) };
}

/// Holds the record while its `_credential_audit_append` runs; dropping it (on return or
/// unwinding) withdraws a record that was not taken.
struct PendingGuard(());

impl PendingGuard {
    fn hand_over(record: AuditRecord) -> PendingGuard {
        let pending = Pending {
            record,
            subxact: call::current_subxact(),
        };
        PENDING.with(|p| {
            if let Ok(mut slot) = p.try_borrow_mut() {
                *slot = Some(pending);
            }
        });
        PendingGuard(())
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        wipe_pending(None);
    }
}

/// The record a rotation of this backend has just handed over, if any.
fn take_pending() -> Option<AuditRecord> {
    PENDING.with(|p| p.try_borrow_mut().ok()?.take().map(|p| p.record))
}

/// Withdraws the pending record: any (`None`), or only one handed over in subtransaction
/// `from` or a later one (one that is aborting, and its children).
pub fn wipe_pending(from: Option<pg_sys::SubTransactionId>) {
    PENDING.with(|p| {
        if let Ok(mut slot) = p.try_borrow_mut() {
            if slot
                .as_ref()
                .is_some_and(|p| from.is_none_or(|s| p.subxact >= s))
            {
                slot.take();
            }
        }
    });
}

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
    let _pending = PendingGuard::hand_over(AuditRecord {
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
            target.helper_schema
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
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_definer,
    schema = "credential_rotate"
)]
#[search_path(pg_catalog, pg_temp)]
fn _credential_audit_append() -> bool {
    let record = take_pending()
        .ok_or(Error::NotInCall {
            helper: "_credential_audit_append",
            caller: "credential_reencrypt",
        })
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
