//! `credential_reencrypt` (one or several old keys, whole table or one batch of
//! `credential_reencrypt_batched`) and the per-row helpers it drives.
//!
//! A rotation is one set-based statement ([`Target::rotation_statement`]). For a json or text
//! column:
//!
//! ```sql
//! UPDATE t SET col = _credential_reencrypt_take(ctid)::<type>
//!  WHERE _credential_reencrypt_row(tableoid, ctid, col::text)
//! ```
//!
//! and for a jsonb column, whose envelope is read in its binary form and never as text:
//!
//! ```sql
//! UPDATE t SET col = _credential_reencrypt_take_jsonb(ctid, col)
//!  WHERE _credential_reencrypt_row_jsonb(tableoid, ctid, col)
//! ```
//!
//! The keys never appear in that statement. The calling function parses them once, builds the
//! AES key schedules once, and installs them as the backend's *active call* ([`crate::call`]);
//! the helpers find them there. `_row` decides each row's fate in the scan's qual — counting
//! it, raising an ERROR naming the row if it opens with no key — and stashes the re-sealed
//! value: the whole envelope as JSON text, or, for jsonb, only the three re-sealed fields.
//! `_take` hands it to the UPDATE's target list for the same tuple, checking the ctid; the
//! jsonb `_take` splices the three fields into a copy of the stored value, every other field
//! kept byte for byte ([`crate::jsonb`]). Rows that are empty or already current fail the qual
//! and are not rewritten at all. Rows are streamed by the executor, never collected.
//!
//! The audit row ([`crate::audit`]) and the progress NOTICEs ([`crate::progress`]) have their
//! own modules; the statement itself is built in [`crate::statement`].

use std::rc::Rc;

use pgrx::datum::Array;
use pgrx::prelude::*;

use crate::call::{self, Counts, Stashed, Work};
use crate::encoding::{self, DbText};
use crate::envelope::{EnvelopeError, Rotation, Rotator};
use crate::error::{required, Error, OrReport};
use crate::functions::{parse_key, parse_rotation_keys};
use crate::jsonb::RawJsonb;
use crate::key::Key;
use crate::target::{self, Lock, Target};
use crate::{audit, hygiene, progress};

/// Re-encrypts every secret of the target column from `old_key` to `new_key`, in place, in
/// the caller's transaction.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn credential_reencrypt(
    old_key: Option<DbText>,
    new_key: Option<DbText>,
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
        let options = Options::whole_table(dry_run, touch_updated_at)?;
        rotate(
            KeyArgs::One(old_key.as_ref()),
            new_key.as_ref(),
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
    old_key: Option<DbText>,
    new_key: Option<DbText>,
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
            KeyArgs::One(old_key.as_ref()),
            new_key.as_ref(),
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

impl Options {
    /// The options of `credential_reencrypt`, from its arguments.
    fn whole_table(
        dry_run: Option<bool>,
        touch_updated_at: Option<bool>,
    ) -> Result<Options, Error> {
        Ok(Options {
            dry_run: required(dry_run, "dry_run")?,
            touch_updated_at: required(touch_updated_at, "touch_updated_at")?,
            blocks: None,
        })
    }
}

/// The old key argument of a rotation as given: `old_key`, or `old_keys`.
enum KeyArgs<'b, 'a> {
    One(Option<&'b DbText>),
    Several(Option<&'b Array<'a, DbText>>),
}

/// What a rotation did: its counts, and the rows each old key opened, by fingerprint, in the
/// order the keys were given.
struct Rotated {
    counts: Counts,
    opened_by: Vec<(String, i64)>,
}

fn rotate(
    old_keys: KeyArgs<'_, '_>,
    new_key: Option<&DbText>,
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
    let (table, column) = target::names(target_table, secret_column)?;
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
        let range_args = match blocks {
            Some((first, end)) => vec![format!("({first},0)"), format!("({end},0)")],
            None => vec![],
        };
        let statement =
            target.rotation_statement(dry_run, touch_column.as_deref(), blocks.is_some());
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
        audit::append(
            client,
            &target,
            counts,
            &opened_by,
            &old_fingerprints,
            new_fingerprint,
        )?;
        Ok(Rotated { counts, opened_by })
    })
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
    old_keys: Option<Array<'a, DbText>>,
    new_key: Option<DbText>,
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
        let options = Options::whole_table(dry_run, touch_updated_at)?;
        let dry = options.dry_run;
        let rotated = rotate(
            KeyArgs::Several(old_keys.as_ref()),
            new_key.as_ref(),
            target_table,
            secret_column,
            options,
        )?;
        Ok::<_, Error>((rotated, dry))
    })()
    .or_report();
    progress::opened_by_notice(&rotated.opened_by, rotated.counts.updated, dry).report();
    let c = rotated.counts;
    TableIterator::once((c.scanned, c.updated, c.already_current, c.empty))
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
    old_keys: Option<Array<'a, DbText>>,
    new_key: Option<DbText>,
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
            new_key.as_ref(),
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

/// The bookkeeping shared by both quals: find the active rotation, decide the row (with no
/// borrow of the call state live: reading the value may call Postgres), count it, stash the
/// re-sealed value, then, with the borrow released again, report progress or raise the row's
/// error naming it.
fn rotation_row(
    helper: &'static str,
    tableoid: pg_sys::Oid,
    ctid: pg_sys::ItemPointerData,
    decide: impl FnOnce(&Rotator, bool) -> Result<Rotation<Option<Stashed>>, EnvelopeError>,
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
            Ok(Rotation::Empty) => {
                call.counts.empty += 1;
                Ok(false)
            }
            Ok(Rotation::AlreadyCurrent) => {
                call.counts.already_current += 1;
                Ok(false)
            }
            Ok(Rotation::Resealed { value: stashed, by }) => {
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
            .then(|| progress::progress_notice(call));
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
                return Ok(Rotation::Empty);
            };
            // Read as UTF-8 (its own fields are ASCII; others need not be). The plaintext
            // inside is opaque bytes: re-sealing never converts it.
            let secret = secret
                .to_utf8("the envelope")
                .map_err(|_| EnvelopeError::NotJson)?;
            Ok(rotator
                .rotate(&secret, reseal)?
                .map(|envelope| reseal.then(|| Stashed::Text(envelope.into_json()))))
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
                return Ok(Rotation::Empty);
            };
            // SAFETY: the argument is declared jsonb.
            let Some(sealed) = (unsafe { secret.sealed() })? else {
                return Ok(Rotation::Empty);
            };
            Ok(rotator
                .rotate_sealed(sealed, reseal)?
                .map(|parts| parts.map(Stashed::Parts)))
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

fn same_tid(a: pg_sys::ItemPointerData, b: pg_sys::ItemPointerData) -> bool {
    pgrx::itemptr::item_pointer_to_u64(a) == pgrx::itemptr::item_pointer_to_u64(b)
}
