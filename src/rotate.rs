//! `credential_reencrypt`, `credential_verify` and the per-row helpers they drive.
//!
//! A rotation is one set-based statement:
//!
//! ```sql
//! UPDATE t SET col = _credential_reencrypt_take(ctid)::<type>
//!  WHERE _credential_reencrypt_row(tableoid, ctid, col::text)
//! ```
//!
//! The keys never appear in that statement. The calling function parses them once, builds
//! both AES key schedules once, and installs them as the backend's *active call*; the helpers
//! find them there. `_row` decides each row's fate in the scan's qual — counting it, raising an
//! ERROR naming the row if it opens with neither key — and stashes the re-sealed envelope;
//! `_take` hands it to the UPDATE's target list for the same tuple, checking the ctid. Rows
//! that are empty or already current fail the qual and are not rewritten at all. Rows are
//! streamed by the executor, never collected.

use std::rc::Rc;

use pgrx::prelude::*;

use crate::call::{self, ActiveCall, AuditRecord, Counts, Stashed, Work};
use crate::envelope::{Cipher, EnvelopeError, PartsRotation, Rotation, Rotator, Status};
use crate::error::{Error, OrReport};
use crate::functions::parse_key;
use crate::hygiene;
use crate::jsonb::RawJsonb;
use crate::target::{ColumnType, Lock, Target};

/// Re-encrypts every secret of the target column from `old_key` to `new_key`, in place, in
/// the caller's transaction.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn credential_reencrypt(
    old_key: Option<&str>,
    new_key: Option<&str>,
    target_table: default!(Option<&str>, "'credential_profiles'"),
    secret_column: default!(Option<&str>, "'secret'"),
    dry_run: default!(Option<bool>, false),
    touch_updated_at: default!(Option<bool>, false),
) -> TableIterator<
    'static,
    (
        name!(scanned, i64),
        name!(updated, i64),
        name!(already_current, i64),
        name!(empty, i64),
    ),
> {
    hygiene::mark_statement();
    let c = (|| {
        let options = Options {
            dry_run: dry_run.ok_or(Error::NullArgument("dry_run"))?,
            touch_updated_at: touch_updated_at.ok_or(Error::NullArgument("touch_updated_at"))?,
            blocks: None,
        };
        rotate(old_key, new_key, target_table, secret_column, options)
    })()
    .or_report();
    TableIterator::once((c.scanned, c.updated, c.already_current, c.empty))
}

/// One batch of `credential_reencrypt_batched`: the rows stored in heap blocks
/// `[first_block, end_block)`, found with a TID range scan; both NULL for the whole table
/// (the procedure's final pass).
///
/// Executable by PUBLIC, but it refuses unless the caller may execute
/// `credential_reencrypt_batched`: a rotation role is granted the procedure it uses, not the
/// procedure's internals.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn _credential_reencrypt_blocks(
    old_key: Option<&str>,
    new_key: Option<&str>,
    target_table: Option<&str>,
    secret_column: Option<&str>,
    first_block: Option<i64>,
    end_block: Option<i64>,
) -> TableIterator<
    'static,
    (
        name!(scanned, i64),
        name!(updated, i64),
        name!(already_current, i64),
        name!(empty, i64),
    ),
> {
    hygiene::mark_statement();
    let c = (|| {
        may_execute_batched()?;
        let blocks = match (first_block, end_block) {
            (Some(first), Some(end)) => Some((first, end)),
            (None, None) => None,
            (None, Some(_)) => return Err(Error::NullArgument("first_block")),
            (Some(_), None) => return Err(Error::NullArgument("end_block")),
        };
        let options = Options {
            dry_run: false,
            touch_updated_at: false,
            blocks,
        };
        rotate(old_key, new_key, target_table, secret_column, options)
    })()
    .or_report();
    TableIterator::once((c.scanned, c.updated, c.already_current, c.empty))
}

/// Whether the current role may execute `credential_reencrypt_batched` of this extension.
fn may_execute_batched() -> Result<(), Error> {
    let allowed = Spi::connect(|client| {
        client
            .select(
                "SELECT pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
                   FROM pg_catalog.pg_proc p
                   JOIN pg_catalog.pg_extension e ON e.extnamespace = p.pronamespace
                  WHERE e.extname = 'credential_rotate'
                    AND p.proname = 'credential_reencrypt_batched'",
                Some(1),
                &[],
            )?
            .first()
            .get_one::<bool>()
    })?;
    if allowed == Some(true) {
        Ok(())
    } else {
        Err(Error::PermissionDenied("credential_reencrypt_batched"))
    }
}

struct Options {
    dry_run: bool,
    touch_updated_at: bool,
    /// Restrict the rotation to the rows stored in this range of heap blocks.
    blocks: Option<(i64, i64)>,
}

fn rotate(
    old_key: Option<&str>,
    new_key: Option<&str>,
    target_table: Option<&str>,
    secret_column: Option<&str>,
    options: Options,
) -> Result<Counts, Error> {
    let old = parse_key("old_key", old_key)?;
    let new = parse_key("new_key", new_key)?;
    if old == new {
        return Err(Error::SameKey);
    }
    let table = target_table.ok_or(Error::NullArgument("target_table"))?;
    let column = secret_column.ok_or(Error::NullArgument("secret_column"))?;
    let Options {
        dry_run,
        touch_updated_at: touch,
        blocks,
    } = options;
    // Under REPEATABLE READ or SERIALIZABLE the UPDATE would use the transaction's snapshot,
    // taken before our table lock was granted: a row inserted under the old key while we
    // waited for the lock would be invisible to the rotation and silently stay behind.
    // SAFETY: reads a backend-local setting.
    if !dry_run && unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(Error::IsolationLevel);
    }
    let rotator = Rc::new(Rotator::new(&old, &new));
    let fingerprints = (old.fingerprint(), new.fingerprint());
    drop((old, new));

    Spi::connect_mut(|client| -> Result<Counts, Error> {
        let lock = if dry_run {
            Lock::AccessShare
        } else {
            Lock::ShareRowExclusive
        };
        let target = Rc::new(Target::resolve(client, table, column, lock)?);
        let touch_column = if touch {
            Some(target.timestamp_column(client, "updated_at")?)
        } else {
            None
        };
        // The block range goes first so that the planner picks a TID range scan.
        let (range, range_args) = match blocks {
            Some((first, end)) => (
                "ctid >= $1::pg_catalog.tid AND ctid < $2::pg_catalog.tid AND ",
                vec![format!("({first},0)"), format!("({end},0)")],
            ),
            None => ("", vec![]),
        };
        // The qual that classifies (and, unless dry, re-seals) each row: jsonb columns are read
        // in their binary form, json and text columns as text.
        let qual = if target.column_type == ColumnType::Jsonb {
            format!(
                "{ext}._credential_reencrypt_row_jsonb(tableoid, ctid, {col})",
                ext = target.ext_schema,
                col = target.column
            )
        } else {
            format!(
                "{ext}._credential_reencrypt_row(tableoid, ctid, {col}::pg_catalog.text)",
                ext = target.ext_schema,
                col = target.column
            )
        };
        let statement = if dry_run {
            format!(
                "SELECT pg_catalog.count(*) FROM {rel} WHERE {range}{qual}",
                rel = target.relation,
            )
        } else {
            let touch = touch_column
                .map(|c| format!(", {c} = pg_catalog.now()"))
                .unwrap_or_default();
            if target.column_type == ColumnType::Jsonb {
                format!(
                    "UPDATE {rel} SET {col} = {ext}._credential_reencrypt_take_jsonb(ctid, {col}){touch}
                      WHERE {range}{qual}",
                    rel = target.relation,
                    ext = target.ext_schema,
                    col = target.column,
                )
            } else {
                format!(
                    "UPDATE {rel} SET {col} = {ext}._credential_reencrypt_take(ctid)::{ty}{touch}
                      WHERE {range}{qual}",
                    rel = target.relation,
                    ext = target.ext_schema,
                    col = target.column,
                    ty = target.column_type.sql(),
                )
            }
        };
        let guard = call::install(Work::Rotate { rotator, dry_run }, Rc::clone(&target))?;
        let args: Vec<pgrx::datum::DatumWithOid> =
            range_args.iter().map(|a| a.as_str().into()).collect();
        let processed = client.update(&statement, None, &args)?.len() as i64;
        let counts = guard.counts();
        drop(guard);
        if dry_run {
            return Ok(counts);
        }
        if processed != counts.updated {
            return Err(Error::RowsSkipped {
                table: target.relation.clone(),
                skipped: counts.updated - processed,
            });
        }
        let rotated_by = client
            .select("SELECT current_user::pg_catalog.text", Some(1), &[])?
            .first()
            .get_one::<String>()?
            .unwrap_or_default();
        let _pending = call::set_pending_audit(AuditRecord {
            ext_schema: target.ext_schema.clone(),
            rotated_by,
            target_table: target.relation.clone(),
            secret_column: target.column.clone(),
            counts,
            old_fingerprint: fingerprints.0,
            new_fingerprint: fingerprints.1,
        });
        client.update(
            &format!("SELECT {}._credential_audit_append()", target.ext_schema),
            None,
            &[],
        )?;
        Ok(counts)
    })
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
    Spi::connect_mut(|client| {
        client
            .update(
                &format!(
                    "INSERT INTO {}.credential_rotate_audit
                   (rotated_by, target_table, secret_column, scanned, updated, already_current,
                    empty, old_key_fingerprint, new_key_fingerprint)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    record.ext_schema
                ),
                None,
                &[
                    record.rotated_by.as_str().into(),
                    record.target_table.as_str().into(),
                    record.secret_column.as_str().into(),
                    record.counts.scanned.into(),
                    record.counts.updated.into(),
                    record.counts.already_current.into(),
                    record.counts.empty.into(),
                    record.old_fingerprint.as_str().into(),
                    record.new_fingerprint.as_str().into(),
                ],
            )
            .map(|_| true)
    })
    .map_err(Error::from)
    .or_report()
}

/// What the qual decided for one row.
enum RowOutcome {
    Empty,
    AlreadyCurrent,
    /// Opened with the old key; the re-sealed value to write (None in a dry run).
    Rewrite(Option<Stashed>),
}

/// The bookkeeping shared by both quals: find the active rotation, decide the row (with no
/// borrow of the call state live: reading the value may call Postgres), count it, stash the
/// re-sealed value, then, with the borrow released again, report progress or raise the row's
/// error naming it.
fn rotation_row(
    helper: &'static str,
    tableoid: pg_sys::Oid,
    ctid: pg_sys::ItemPointerData,
    decide: impl FnOnce(&Rotator, bool) -> Result<RowOutcome, EnvelopeError>,
) -> bool {
    let (rotator, reseal) = call::with_active(helper, |call| match &call.work {
        Work::Rotate { rotator, dry_run } => Ok((Rc::clone(rotator), !*dry_run)),
        Work::Verify { .. } => Err(Error::NotInCall(helper)),
    })
    .or_report();
    let decided = decide(&rotator, reseal);
    drop(rotator);
    let (update, progress) = call::with_active(helper, |call| {
        call.counts.scanned += 1;
        let update = match decided {
            Ok(RowOutcome::Empty) => {
                call.counts.empty += 1;
                Ok(false)
            }
            Ok(RowOutcome::AlreadyCurrent) => {
                call.counts.already_current += 1;
                Ok(false)
            }
            Ok(RowOutcome::Rewrite(stashed)) => {
                call.counts.updated += 1;
                call.stash = stashed.map(|value| (ctid, value));
                Ok(true)
            }
            Err(reason) => Err((reason, Rc::clone(&call.target))),
        };
        let progress = (call.progress_every > 0 && call.counts.scanned % call.progress_every == 0)
            .then(|| progress_notice(call));
        Ok((update, progress))
    })
    .or_report();
    if let Some(notice) = progress {
        notice.report();
    }
    match update {
        Ok(update) => update,
        Err((reason, target)) => report_row_error(&target, tableoid, ctid, reason),
    }
}

/// The qual of a rotation: true when the row was opened with the old key and re-sealed.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn _credential_reencrypt_row(
    tableoid: pg_sys::Oid,
    ctid: pg_sys::ItemPointerData,
    secret: Option<&str>,
) -> bool {
    rotation_row(
        "_credential_reencrypt_row",
        tableoid,
        ctid,
        |rotator, reseal| {
            let Some(secret) = secret else {
                return Ok(RowOutcome::Empty);
            };
            Ok(match rotator.rotate(secret, reseal)? {
                Rotation::Empty => RowOutcome::Empty,
                Rotation::AlreadyCurrent => RowOutcome::AlreadyCurrent,
                Rotation::Resealed(envelope) => {
                    RowOutcome::Rewrite(reseal.then(|| Stashed::Text(envelope.into_json())))
                }
            })
        },
    )
}

/// The qual of a rotation of a jsonb column: as `_credential_reencrypt_row`, reading the
/// envelope's fields straight from the binary jsonb.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn _credential_reencrypt_row_jsonb(
    tableoid: pg_sys::Oid,
    ctid: pg_sys::ItemPointerData,
    secret: Option<RawJsonb>,
) -> bool {
    rotation_row(
        "_credential_reencrypt_row_jsonb",
        tableoid,
        ctid,
        |rotator, reseal| {
            let Some(secret) = secret else {
                return Ok(RowOutcome::Empty);
            };
            // SAFETY: the argument is declared jsonb.
            let Some(sealed) = (unsafe { secret.sealed() })? else {
                return Ok(RowOutcome::Empty);
            };
            Ok(match rotator.rotate_sealed(sealed, reseal)? {
                PartsRotation::AlreadyCurrent => RowOutcome::AlreadyCurrent,
                PartsRotation::Resealed(parts) => RowOutcome::Rewrite(parts.map(Stashed::Parts)),
            })
        },
    )
}

/// Takes the value the qual stashed for this row. The executor evaluates a scan's qual and
/// target list for one tuple before it reads the next; anything else would pair a row with
/// another row's secret, so a mismatch is refused.
fn take_stashed(helper: &'static str, ctid: pg_sys::ItemPointerData) -> Result<Stashed, Error> {
    call::with_active(helper, |call| match call.stash.take() {
        Some((stashed, value)) if same_tid(stashed, ctid) => Ok(value),
        _ => Err(Error::Internal(
            "re-sealed envelope does not belong to the row being updated".into(),
        )),
    })
}

/// The target list of a jsonb rotation: the stored envelope with the three fields
/// `_credential_reencrypt_row_jsonb` just re-sealed for this row, every other field kept.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn _credential_reencrypt_take_jsonb(ctid: pg_sys::ItemPointerData, secret: RawJsonb) -> RawJsonb {
    let parts = match take_stashed("_credential_reencrypt_take_jsonb", ctid) {
        Ok(Stashed::Parts(parts)) => parts,
        Ok(Stashed::Text(_)) => {
            Error::Internal("a text envelope stashed for a jsonb row".into()).report()
        }
        Err(e) => e.report(),
    };
    // SAFETY: the qual decoded all three fields from this same value of this same row.
    unsafe { secret.with_parts(&parts) }
}

/// The target list of a rotation: the envelope `_credential_reencrypt_row` just re-sealed.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn _credential_reencrypt_take(ctid: pg_sys::ItemPointerData) -> String {
    match take_stashed("_credential_reencrypt_take", ctid) {
        Ok(Stashed::Text(envelope)) => envelope,
        Ok(Stashed::Parts(_)) => {
            Error::Internal("jsonb parts stashed for a text row".into()).report()
        }
        Err(e) => e.report(),
    }
}

/// Raises the ERROR for a row that cannot be rotated, naming it by primary key.
fn report_row_error(
    target: &Target,
    tableoid: pg_sys::Oid,
    ctid: pg_sys::ItemPointerData,
    reason: EnvelopeError,
) -> ! {
    Error::Row {
        pk: target.describe_row(tableoid, ctid),
        table: target.relation.clone(),
        reason,
    }
    .report()
}

/// A progress NOTICE, built under the borrow of the call state and emitted after it.
struct ProgressNotice {
    message: String,
    detail: String,
}

/// Rows and the estimated total in the message, the rate in the DETAIL (kept apart so that
/// the message itself is stable enough for a test to match).
fn progress_notice(call: &ActiveCall) -> ProgressNotice {
    let scanned = call.counts.scanned;
    let message = match call.target.estimated_rows {
        Some(total) => format!(
            "credential_reencrypt: {scanned} of about {total} rows of {} scanned",
            call.target.relation
        ),
        None => format!(
            "credential_reencrypt: {scanned} rows of {} scanned",
            call.target.relation
        ),
    };
    let seconds = call.started.elapsed().as_secs_f64().max(1e-9);
    let detail = format!(
        "{} re-sealed so far, {:.0} rows/s",
        call.counts.updated,
        scanned as f64 / seconds
    );
    ProgressNotice { message, detail }
}

impl ProgressNotice {
    fn report(self) {
        let report = pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            self.message,
            "credential_rotate",
        )
        .set_detail(self.detail);
        // errfinish() runs CHECK_FOR_INTERRUPTS after a NOTICE: a cancel or statement_timeout
        // arriving then raises from inside it. pgrx's NOTICE path is not guarded, so without
        // the boundary that ERROR would longjmp over our Rust frames; with it, it unwinds them.
        // SAFETY: called on the backend's main thread, from a function pgrx guards.
        unsafe {
            pgrx::pg_sys::ffi::pg_guard_ffi_boundary(|| report.report(PgLogLevel::NOTICE));
        }
    }
}

/// Counts how the secrets of the target column fare against `key`. Changes nothing.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn credential_verify(
    key: Option<&str>,
    target_table: default!(Option<&str>, "'credential_profiles'"),
    secret_column: default!(Option<&str>, "'secret'"),
) -> TableIterator<
    'static,
    (
        name!(readable, i64),
        name!(not_readable, i64),
        name!(empty, i64),
        name!(malformed, i64),
    ),
> {
    let counts = with_verify_call(key, target_table, secret_column, |client, target| {
        let row = client
            .select(
                &format!(
                    "SELECT count(*) FILTER (WHERE s = 'readable'),
                            count(*) FILTER (WHERE s = 'not_readable'),
                            count(*) FILTER (WHERE s = 'empty'),
                            count(*) FILTER (WHERE s NOT IN ('readable', 'not_readable', 'empty'))
                       FROM (SELECT {status} AS s FROM {rel}) AS statuses",
                    status = status_expr(target),
                    rel = target.relation,
                ),
                Some(1),
                &[],
            )?
            .first();
        let (a, b, c) = row.get_three::<i64, i64, i64>()?;
        let d = row.get::<i64>(4)?;
        Ok((
            a.unwrap_or(0),
            b.unwrap_or(0),
            c.unwrap_or(0),
            d.unwrap_or(0),
        ))
    });
    TableIterator::once(counts)
}

/// Lists the rows whose secret does not open with `key`: primary key and reason, never secret
/// material. For diagnosis before or after a rotation.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn credential_verify_rows(
    key: Option<&str>,
    target_table: default!(Option<&str>, "'credential_profiles'"),
    secret_column: default!(Option<&str>, "'secret'"),
) -> TableIterator<'static, (name!(primary_key, String), name!(reason, String))> {
    let rows = with_verify_call(key, target_table, secret_column, |client, target| {
        let table = client.select(
            &format!(
                "SELECT $1 || '=(' || pk || ')',
                        CASE s WHEN 'not_readable' THEN 'the envelope does not open with the key'
                               ELSE s END
                   FROM (SELECT {pk} AS pk, {status} AS s FROM {rel}) AS statuses
                  WHERE s NOT IN ('readable', 'empty')
                  ORDER BY pk",
                pk = target.pk_value_expr,
                status = status_expr(target),
                rel = target.relation,
            ),
            None,
            &[target.pk_columns.as_str().into()],
        )?;
        let mut rows = Vec::new();
        for row in table {
            let pk = row.get::<String>(1)?.unwrap_or_default();
            let reason = row.get::<String>(2)?.unwrap_or_default();
            rows.push((pk, reason));
        }
        Ok(rows)
    });
    TableIterator::new(rows)
}

fn with_verify_call<R>(
    key: Option<&str>,
    target_table: Option<&str>,
    secret_column: Option<&str>,
    body: impl FnOnce(&mut pgrx::spi::SpiClient<'_>, &Target) -> Result<R, Error>,
) -> R {
    hygiene::mark_statement();
    (|| {
        let key = parse_key("key", key)?;
        let table = target_table.ok_or(Error::NullArgument("target_table"))?;
        let column = secret_column.ok_or(Error::NullArgument("secret_column"))?;
        let cipher = Rc::new(Cipher::new(&key));
        drop(key);
        Spi::connect_mut(|client| -> Result<R, Error> {
            let target = Rc::new(Target::resolve(client, table, column, Lock::AccessShare)?);
            let _guard = call::install(Work::Verify { cipher }, Rc::clone(&target))?;
            body(client, &target)
        })
    })()
    .or_report()
}

/// The per-row status expression of a verification: binary for jsonb, text otherwise.
fn status_expr(target: &Target) -> String {
    if target.column_type == ColumnType::Jsonb {
        format!(
            "{}._credential_status_jsonb({})",
            target.ext_schema, target.column
        )
    } else {
        format!(
            "{}._credential_status({}::pg_catalog.text)",
            target.ext_schema, target.column
        )
    }
}

/// As `_credential_status`, for a jsonb value read in its binary form.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn _credential_status_jsonb(secret: Option<RawJsonb>) -> String {
    with_verify_cipher("_credential_status_jsonb", |cipher| {
        let Some(secret) = secret else {
            return Status::Empty;
        };
        // SAFETY: the argument is declared jsonb.
        match unsafe { secret.sealed() } {
            Ok(None) => Status::Empty,
            Ok(Some(sealed)) => match cipher.open_sealed(&sealed) {
                Ok(_) => Status::Readable,
                Err(EnvelopeError::DoesNotOpen) => Status::NotReadable,
                Err(other) => Status::Malformed(other),
            },
            Err(other) => Status::Malformed(other),
        }
    })
}

/// Classifies one row under the active verification's key, with no borrow of the call state
/// live while `status` runs (reading the value may call Postgres).
fn with_verify_cipher(helper: &'static str, status: impl FnOnce(&Cipher) -> Status) -> String {
    let cipher = call::with_active(helper, |call| match &call.work {
        Work::Verify { cipher } => {
            call.counts.scanned += 1;
            Ok(Rc::clone(cipher))
        }
        Work::Rotate { .. } => Err(Error::NotInCall(helper)),
    })
    .or_report();
    match status(&cipher) {
        Status::Empty => "empty".into(),
        Status::Readable => "readable".into(),
        Status::NotReadable => "not_readable".into(),
        Status::Malformed(reason) => reason.to_string(),
    }
}

/// Per-row status under the active `credential_verify` key: `empty`, `readable`,
/// `not_readable`, or the reason the value is malformed.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn _credential_status(secret: Option<&str>) -> String {
    with_verify_cipher("_credential_status", |cipher| match secret {
        None => Status::Empty,
        Some(secret) => cipher.status(secret),
    })
}

fn same_tid(a: pg_sys::ItemPointerData, b: pg_sys::ItemPointerData) -> bool {
    pgrx::itemptr::item_pointer_to_u64(a) == pgrx::itemptr::item_pointer_to_u64(b)
}
