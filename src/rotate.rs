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

use pgrx::datum::Array;
use pgrx::prelude::*;

use crate::call::{self, ActiveCall, AuditRecord, Counts, Stashed, Work};
use crate::encoding::{self, DbText, GetText};
use crate::envelope::{Cipher, EnvelopeError, KeyRing, PartsRotation, Rotation, Rotator, Status};
use crate::error::{Error, OrReport};
use crate::functions::{parse_key, parse_key_list, parse_rotation_keys};
use crate::hygiene;
use crate::jsonb::RawJsonb;
use crate::key::Key;
use crate::target::{ColumnType, Lock, Target};

/// Re-encrypts every secret of the target column from `old_key` to `new_key`, in place, in
/// the caller's transaction.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn credential_reencrypt(
    old_key: Option<&str>,
    new_key: Option<&str>,
    target_table: default!(Option<DbText>, "'credential_profiles'"),
    secret_column: default!(Option<DbText>, "'secret'"),
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
        rotate(
            KeyArgs::One(old_key),
            new_key,
            target_table,
            secret_column,
            options,
        )
        .map(|r| r.counts)
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
    target_table: Option<DbText>,
    secret_column: Option<DbText>,
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
        let options = Options {
            dry_run: false,
            touch_updated_at: false,
            blocks: block_range(first_block, end_block)?,
        };
        rotate(
            KeyArgs::One(old_key),
            new_key,
            target_table,
            secret_column,
            options,
        )
        .map(|r| r.counts)
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

/// The old key argument of a rotation as given: `old_key`, or `old_keys`.
enum KeyArgs<'b, 'a> {
    One(Option<&'b str>),
    Several(Option<&'b Array<'a, &'a str>>),
}

/// What a rotation did: its counts, and the rows each old key opened, by fingerprint, in the
/// order the keys were given.
struct Rotated {
    counts: Counts,
    opened_by: Vec<(String, i64)>,
}

fn rotate(
    old_keys: KeyArgs<'_, '_>,
    new_key: Option<&str>,
    target_table: Option<DbText>,
    secret_column: Option<DbText>,
    options: Options,
) -> Result<Rotated, Error> {
    // Parsed, the ciphers built and the fingerprints taken, the keys are dropped (and wiped).
    let (rotator, old_fingerprints, new_fingerprint) = match old_keys {
        KeyArgs::One(old_key) => {
            let old = parse_key("old_key", old_key)?;
            let new = parse_key("new_key", new_key)?;
            if old == new {
                return Err(Error::SameKey);
            }
            (
                Rotator::new(&old, &new),
                vec![old.fingerprint()],
                new.fingerprint(),
            )
        }
        KeyArgs::Several(old_keys) => {
            let (old, new) = parse_rotation_keys(old_keys.map(|a| a.iter()), new_key)?;
            (
                Rotator::with_old_keys(&old, &new),
                old.iter().map(Key::fingerprint).collect(),
                new.fingerprint(),
            )
        }
    };
    let table = target_table.ok_or(Error::NullArgument("target_table"))?;
    let column = secret_column.ok_or(Error::NullArgument("secret_column"))?;
    let (table, column) = (
        table.to_utf8("target_table")?,
        column.to_utf8("secret_column")?,
    );
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
    let rotator = Rc::new(rotator);

    Spi::connect_mut(|client| -> Result<Rotated, Error> {
        let lock = if dry_run {
            Lock::AccessShare
        } else {
            Lock::ShareRowExclusive
        };
        let target = Rc::new(Target::resolve(client, &table, &column, lock)?);
        if !dry_run {
            target.refuse_foreign_code(client)?;
        }
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
        let processed = client
            .update(&encoding::sql(&statement)?, None, &args)?
            .len() as i64;
        let counts = guard.counts();
        let opened_by: Vec<(String, i64)> = old_fingerprints
            .iter()
            .cloned()
            .zip(guard.opened_by())
            .collect();
        drop(guard);
        if dry_run {
            return Ok(Rotated { counts, opened_by });
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
            .get_text(1)?
            .unwrap_or_default();
        let _pending = call::set_pending_audit(AuditRecord {
            ext_schema: target.ext_schema.clone(),
            rotated_by,
            target_table: target.relation.clone(),
            secret_column: target.column.clone(),
            counts,
            opened_by: opened_by.clone(),
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
        Ok(Rotated { counts, opened_by })
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
                          JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                          JOIN pg_catalog.pg_extension e ON e.extnamespace = c.relnamespace
                         WHERE e.extname = 'credential_rotate'
                           AND c.relname = 'credential_rotate_audit'
                           AND a.attname = 'rows_by_old_key' AND NOT a.attisdropped)",
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

/// What the qual decided for one row.
enum RowOutcome {
    Empty,
    AlreadyCurrent,
    /// Opened with old key `by`; the re-sealed value to write (None in a dry run).
    Rewrite {
        stashed: Option<Stashed>,
        by: usize,
    },
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
        Work::Verify { .. } | Work::Census { .. } => Err(Error::NotInCall(helper)),
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
            Ok(RowOutcome::Rewrite { stashed, by }) => {
                call.counts.updated += 1;
                if let Some(opened) = call.opened_by.get_mut(by) {
                    *opened += 1;
                }
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
    secret: Option<DbText>,
) -> bool {
    rotation_row(
        "_credential_reencrypt_row",
        tableoid,
        ctid,
        |rotator, reseal| {
            let Some(secret) = secret else {
                return Ok(RowOutcome::Empty);
            };
            // Read as UTF-8 (its own fields are ASCII; others need not be). The plaintext
            // inside is opaque bytes: re-sealing never converts it.
            let secret = secret
                .to_utf8("the envelope")
                .map_err(|_| EnvelopeError::NotJson)?;
            Ok(match rotator.rotate(&secret, reseal)? {
                Rotation::Empty => RowOutcome::Empty,
                Rotation::AlreadyCurrent => RowOutcome::AlreadyCurrent,
                Rotation::Resealed { envelope, by } => RowOutcome::Rewrite {
                    stashed: reseal.then(|| Stashed::Text(envelope.into_json())),
                    by,
                },
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
                PartsRotation::Resealed { parts, by } => RowOutcome::Rewrite {
                    stashed: parts.map(Stashed::Parts),
                    by,
                },
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
fn _credential_reencrypt_take(ctid: pg_sys::ItemPointerData) -> DbText {
    match take_stashed("_credential_reencrypt_take", ctid) {
        // Back in the database encoding, which every character of it came from.
        Ok(Stashed::Text(envelope)) => DbText::from_utf8(&envelope, "the envelope").or_report(),
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
    target_table: default!(Option<DbText>, "'credential_profiles'"),
    secret_column: default!(Option<DbText>, "'secret'"),
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
                &encoding::sql(&format!(
                    "SELECT count(*) FILTER (WHERE s = 'readable'),
                            count(*) FILTER (WHERE s = 'not_readable'),
                            count(*) FILTER (WHERE s = 'empty'),
                            count(*) FILTER (WHERE s NOT IN ('readable', 'not_readable', 'empty'))
                       FROM (SELECT {status} AS s FROM {rel}) AS statuses",
                    status = status_expr(target),
                    rel = target.relation,
                ))?,
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
    target_table: default!(Option<DbText>, "'credential_profiles'"),
    secret_column: default!(Option<DbText>, "'secret'"),
) -> TableIterator<'static, (name!(primary_key, DbText), name!(reason, DbText))> {
    let rows = with_verify_call(key, target_table, secret_column, |client, target| {
        let table = client.select(
            &encoding::sql(&format!(
                "SELECT $1 || '=(' || pk || ')',
                        CASE s WHEN 'not_readable' THEN 'the envelope does not open with the key'
                               ELSE s END
                   FROM (SELECT {pk} AS pk, {status} AS s FROM {rel}) AS statuses
                  WHERE s NOT IN ('readable', 'empty')
                  ORDER BY pk",
                pk = target.pk_value_expr,
                status = status_expr(target),
                rel = target.relation,
            ))?,
            None,
            &[encoding::param(&target.pk_columns)?],
        )?;
        let mut rows = Vec::new();
        for row in table {
            let pk = row.get_text(1)?.unwrap_or_default();
            let reason = row.get_text(2)?.unwrap_or_default();
            rows.push((pk, reason));
        }
        Ok(rows)
    });
    // Each row's text is made when the row is returned: the SPI memory it was read in is gone,
    // and a value made now would not outlive this first call of the set-returning function.
    TableIterator::new(rows.into_iter().map(|(pk, reason)| {
        (
            DbText::from_utf8(&pk, "a primary key").or_report(),
            DbText::from_utf8(&reason, "a reason").or_report(),
        )
    }))
}

fn with_verify_call<R>(
    key: Option<&str>,
    target_table: Option<DbText>,
    secret_column: Option<DbText>,
    body: impl FnOnce(&mut pgrx::spi::SpiClient<'_>, &Target) -> Result<R, Error>,
) -> R {
    hygiene::mark_statement();
    (|| {
        let key = parse_key("key", key)?;
        let table = target_table.ok_or(Error::NullArgument("target_table"))?;
        let column = secret_column.ok_or(Error::NullArgument("secret_column"))?;
        let (table, column) = (
            table.to_utf8("target_table")?,
            column.to_utf8("secret_column")?,
        );
        let cipher = Rc::new(Cipher::new(&key));
        drop(key);
        Spi::connect_mut(|client| -> Result<R, Error> {
            let target = Rc::new(Target::resolve(client, &table, &column, Lock::AccessShare)?);
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
        Work::Rotate { .. } | Work::Census { .. } => Err(Error::NotInCall(helper)),
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
fn _credential_status(secret: Option<DbText>) -> String {
    with_verify_cipher("_credential_status", |cipher| match secret {
        None => Status::Empty,
        Some(secret) => match secret.to_utf8("the envelope") {
            Ok(secret) => cipher.status(&secret),
            Err(_) => Status::Malformed(EnvelopeError::NotJson),
        },
    })
}

fn same_tid(a: pg_sys::ItemPointerData, b: pg_sys::ItemPointerData) -> bool {
    pgrx::itemptr::item_pointer_to_u64(a) == pgrx::itemptr::item_pointer_to_u64(b)
}

/// As `credential_reencrypt(text, text, …)`, from any of several old keys: a row that opens
/// with one of `old_keys` is re-sealed under `new_key`. Ends with a NOTICE of the rows each old
/// key opened, by fingerprint, as the audit row records them.
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    name = "credential_reencrypt"
)]
fn credential_reencrypt_keys<'a>(
    old_keys: Option<Array<'a, &'a str>>,
    new_key: Option<&str>,
    target_table: default!(Option<DbText>, "'credential_profiles'"),
    secret_column: default!(Option<DbText>, "'secret'"),
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
    let (rotated, dry) = (|| {
        let options = Options {
            dry_run: dry_run.ok_or(Error::NullArgument("dry_run"))?,
            touch_updated_at: touch_updated_at.ok_or(Error::NullArgument("touch_updated_at"))?,
            blocks: None,
        };
        let dry = options.dry_run;
        let rotated = rotate(
            KeyArgs::Several(old_keys.as_ref()),
            new_key,
            target_table,
            secret_column,
            options,
        )?;
        Ok::<_, Error>((rotated, dry))
    })()
    .or_report();
    opened_by_notice(&rotated, dry).report();
    let c = rotated.counts;
    TableIterator::once((c.scanned, c.updated, c.already_current, c.empty))
}

/// The final NOTICE of a rotation from several old keys: the rows each one opened.
fn opened_by_notice(rotated: &Rotated, dry_run: bool) -> ProgressNotice {
    let by_key = rotated
        .opened_by
        .iter()
        .map(|(fingerprint, rows)| format!("{rows} with old key {fingerprint}"))
        .collect::<Vec<_>>()
        .join(", ");
    let verb = if dry_run {
        "would re-seal"
    } else {
        "re-sealed"
    };
    ProgressNotice {
        message: format!(
            "credential_reencrypt {verb} {} rows, opened {by_key}",
            rotated.counts.updated
        ),
        detail: "Keys are named by their fingerprint, as credential_key_fingerprint() gives it."
            .into(),
    }
}

/// As `_credential_reencrypt_blocks(text, text, …)` for several old keys; also returns the
/// rows each old key opened, with the keys' fingerprints, for the procedure's final NOTICE.
// pgrx reads the result columns from the signature: they cannot move into a type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    name = "_credential_reencrypt_blocks"
)]
fn _credential_reencrypt_blocks_keys<'a>(
    old_keys: Option<Array<'a, &'a str>>,
    new_key: Option<&str>,
    target_table: Option<DbText>,
    secret_column: Option<DbText>,
    first_block: Option<i64>,
    end_block: Option<i64>,
) -> TableIterator<
    'static,
    (
        name!(scanned, i64),
        name!(updated, i64),
        name!(already_current, i64),
        name!(empty, i64),
        name!(opened_by, Vec<i64>),
        name!(old_key_fingerprints, Vec<String>),
    ),
> {
    hygiene::mark_statement();
    let r = (|| {
        may_execute_batched()?;
        let options = Options {
            dry_run: false,
            touch_updated_at: false,
            blocks: block_range(first_block, end_block)?,
        };
        rotate(
            KeyArgs::Several(old_keys.as_ref()),
            new_key,
            target_table,
            secret_column,
            options,
        )
    })()
    .or_report();
    let c = r.counts;
    let (fingerprints, opened): (Vec<String>, Vec<i64>) = r.opened_by.into_iter().unzip();
    TableIterator::once((
        c.scanned,
        c.updated,
        c.already_current,
        c.empty,
        opened,
        fingerprints,
    ))
}

/// The heap block range of one batch: both bounds, or neither for the whole table.
fn block_range(
    first_block: Option<i64>,
    end_block: Option<i64>,
) -> Result<Option<(i64, i64)>, Error> {
    match (first_block, end_block) {
        (Some(first), Some(end)) => Ok(Some((first, end))),
        (None, None) => Ok(None),
        (None, Some(_)) => Err(Error::NullArgument("first_block")),
        (Some(_), None) => Err(Error::NullArgument("end_block")),
    }
}

/// Counts the rows of the target column that open with each of `keys`, in one scan: a
/// `readable` row per key in the order given, then `not_readable`, `empty` and `malformed`
/// (every row present, even at 0). Changes nothing; reads what `credential_verify` reads.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn credential_key_census<'a>(
    keys: Option<Array<'a, &'a str>>,
    target_table: default!(Option<DbText>, "'credential_profiles'"),
    secret_column: default!(Option<DbText>, "'secret'"),
) -> TableIterator<
    'static,
    (
        name!(key_fingerprint, Option<String>),
        name!(status, String),
        name!(rows, i64),
    ),
> {
    hygiene::mark_statement();
    let rows = (|| {
        let keys = parse_key_list("keys", keys.ok_or(Error::NullArgument("keys"))?.iter())?;
        let table = target_table.ok_or(Error::NullArgument("target_table"))?;
        let column = secret_column.ok_or(Error::NullArgument("secret_column"))?;
        let (table, column) = (
            table.to_utf8("target_table")?,
            column.to_utf8("secret_column")?,
        );
        let fingerprints: Vec<String> = keys.iter().map(Key::fingerprint).collect();
        let ring = Rc::new(KeyRing::new(&keys));
        drop(keys);
        Spi::connect_mut(|client| -> Result<_, Error> {
            let target = Rc::new(Target::resolve(client, &table, &column, Lock::AccessShare)?);
            let helper = if target.column_type == ColumnType::Jsonb {
                format!(
                    "{}._credential_census_status_jsonb({})",
                    target.ext_schema, target.column
                )
            } else {
                format!(
                    "{}._credential_census_status({}::pg_catalog.text)",
                    target.ext_schema, target.column
                )
            };
            let guard = call::install(Work::Census { keys: ring }, Rc::clone(&target))?;
            // The helper counts each row into the call state; the count only drives the scan.
            client.select(
                &format!(
                    "SELECT pg_catalog.count({helper}) FROM {rel}",
                    rel = target.relation
                ),
                Some(1),
                &[],
            )?;
            let counts = guard.counts();
            let opened_by = guard.opened_by();
            drop(guard);
            let mut rows: Vec<(Option<String>, String, i64)> = fingerprints
                .into_iter()
                .zip(opened_by)
                .map(|(fingerprint, n)| (Some(fingerprint), "readable".to_owned(), n))
                .collect();
            for (status, n) in [
                ("not_readable", counts.not_readable),
                ("empty", counts.empty),
                ("malformed", counts.malformed),
            ] {
                rows.push((None, status.to_owned(), n));
            }
            Ok(rows)
        })
    })()
    .or_report();
    TableIterator::new(rows)
}

/// Counts one row of the active census under the key that opens it, with no borrow of the call
/// state live while `identify` runs (reading the value may call Postgres). Returns the key's
/// position in `keys`, from 1; 0 when none opens it, or it is empty or malformed.
fn census_row(
    helper: &'static str,
    identify: impl FnOnce(&KeyRing) -> Result<Option<usize>, EnvelopeError>,
) -> i32 {
    let not_in_census = |e| match e {
        Error::NotInCall(_) => Error::NotInCensus(helper),
        other => other,
    };
    let keys = call::with_active(helper, |call| match &call.work {
        Work::Census { keys } => Ok(Rc::clone(keys)),
        Work::Rotate { .. } | Work::Verify { .. } => Err(Error::NotInCensus(helper)),
    })
    .map_err(not_in_census)
    .or_report();
    let found = identify(&keys);
    drop(keys);
    call::with_active(helper, |call| {
        call.counts.scanned += 1;
        Ok(match found {
            Ok(None) => {
                call.counts.empty += 1;
                0
            }
            Ok(Some(i)) => {
                if let Some(opened) = call.opened_by.get_mut(i) {
                    *opened += 1;
                }
                i32::try_from(i + 1).unwrap_or(i32::MAX)
            }
            Err(EnvelopeError::DoesNotOpen) => {
                call.counts.not_readable += 1;
                0
            }
            Err(_) => {
                call.counts.malformed += 1;
                0
            }
        })
    })
    .map_err(not_in_census)
    .or_report()
}

/// Per-row helper of `credential_key_census`: the position (from 1) of the census key that
/// opens the secret, 0 when none does.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn _credential_census_status(secret: Option<DbText>) -> i32 {
    census_row("_credential_census_status", |keys| match secret {
        None => Ok(None),
        Some(secret) => match secret.to_utf8("the envelope") {
            Ok(secret) => keys.identify_text(&secret),
            Err(_) => Err(EnvelopeError::NotJson),
        },
    })
}

/// As `_credential_census_status`, for a jsonb value read in its binary form.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn _credential_census_status_jsonb(secret: Option<RawJsonb>) -> i32 {
    census_row("_credential_census_status_jsonb", |keys| {
        let Some(secret) = secret else {
            return Ok(None);
        };
        // SAFETY: the argument is declared jsonb.
        match unsafe { secret.sealed() }? {
            None => Ok(None),
            Some(sealed) => keys.identify(sealed).map(Some),
        }
    })
}
