//! The per-row helpers a rotation's statement drives ([`crate::statement`]): the qual decides
//! each row's fate and stashes its re-sealed value, the target list takes it for the same tuple.
//!
//! For a json or text column:
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
//! The keys never appear in that statement: the helpers find the rotation's ciphers in the
//! backend's active call ([`crate::call`]). `_row` counts the row, raising an ERROR naming it if
//! it opens with no key, and stashes the re-sealed value: the whole envelope as JSON text, or,
//! for jsonb, only the three re-sealed fields. `_take` hands it to the UPDATE's target list,
//! checking the ctid, and records what it wrote for the RETURNING check ([`crate::written`]);
//! the jsonb `_take` splices the three fields into a copy of the stored value, every other
//! field kept byte for byte ([`crate::jsonb`]). Rows that are empty or already current fail the
//! qual and are not rewritten at all. Rows are streamed by the executor, never collected.

use std::rc::Rc;

use pgrx::prelude::*;

use crate::call::{self, Stashed};
use crate::encoding::DbText;
use crate::envelope::{DryRun, EnvelopeError, Rotation, Rotator};
use crate::error::{Error, OrReport};
use crate::jsonb::RawJsonb;
use crate::table::TargetError;
use crate::target::Target;
use crate::{progress, written};

/// One row decided by a rotation, or by its dry run.
enum Decided {
    Rotated(Rotation<Stashed>),
    DryRun(DryRun),
}

/// The bookkeeping shared by both quals: find the active rotation, decide the row (with no
/// borrow of the call state live: reading the value may call Postgres), count it, stash the
/// re-sealed value, then, with the borrow released again, report progress or raise the row's
/// error naming it.
fn rotation_row(
    helper: &'static str,
    tableoid: pg_sys::Oid,
    ctid: pg_sys::ItemPointerData,
    decide: impl FnOnce(&Rotator, bool) -> Result<Decided, EnvelopeError>,
) -> bool {
    let (rotator, reseal) =
        call::with_rotation(helper, |r, _, _| Ok((Rc::clone(&r.rotator), !r.dry_run))).or_report();
    let decided = decide(&rotator, reseal);
    drop(rotator);
    let (update, progress) = call::with_rotation(helper, |r, target, started| {
        r.counts.scanned += 1;
        let update = match decided {
            Ok(Decided::Rotated(Rotation::Empty) | Decided::DryRun(DryRun::Empty)) => {
                r.counts.empty += 1;
                Ok(false)
            }
            Ok(
                Decided::Rotated(Rotation::AlreadyCurrent)
                | Decided::DryRun(DryRun::AlreadyCurrent),
            ) => {
                r.counts.already_current += 1;
                Ok(false)
            }
            Ok(Decided::Rotated(Rotation::Resealed { value, by })) => {
                r.counts.updated += 1;
                if let Some(opened) = r.opened_by.get_mut(by) {
                    *opened += 1;
                }
                r.stash = Some((ctid, value));
                Ok(true)
            }
            Ok(Decided::DryRun(DryRun::WouldReseal { by })) => {
                r.counts.updated += 1;
                if let Some(opened) = r.opened_by.get_mut(by) {
                    *opened += 1;
                }
                Ok(true)
            }
            Err(reason) => Err((reason, Rc::clone(target))),
        };
        let progress = (r.progress_every > 0 && r.counts.scanned % r.progress_every == 0)
            .then(|| progress::progress_notice(r.counts, target, started));
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
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    schema = "credential_rotate"
)]
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
                return Ok(Decided::Rotated(Rotation::Empty));
            };
            // Read as UTF-8 (its own fields are ASCII; others need not be). The plaintext
            // inside is opaque bytes: re-sealing never converts it.
            let secret = secret
                .to_utf8("the envelope")
                .map_err(|_| EnvelopeError::NotJson)?;
            Ok(if reseal {
                Decided::Rotated(
                    rotator
                        .rotate(&secret)?
                        .map(|envelope| Stashed::Text(envelope.into_json())),
                )
            } else {
                Decided::DryRun(rotator.dry_run(&secret)?)
            })
        },
    )
}

/// The qual of a rotation of a jsonb column: as `_credential_reencrypt_row`, reading the
/// envelope's fields straight from the binary jsonb.
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    schema = "credential_rotate"
)]
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
                return Ok(Decided::Rotated(Rotation::Empty));
            };
            // SAFETY: the argument is declared jsonb.
            let Some(sealed) = (unsafe { secret.sealed() })? else {
                return Ok(Decided::Rotated(Rotation::Empty));
            };
            Ok(if reseal {
                Decided::Rotated(rotator.rotate_sealed(sealed)?.map(Stashed::Parts))
            } else {
                Decided::DryRun(rotator.dry_run_sealed(sealed)?)
            })
        },
    )
}

/// Takes the value the qual stashed for this row. The executor evaluates a scan's qual and
/// target list for one tuple before it reads the next; anything else would pair a row with
/// another row's secret, so a mismatch is refused.
fn take_stashed(helper: &'static str, ctid: pg_sys::ItemPointerData) -> Result<Stashed, Error> {
    call::with_rotation(helper, |r, _, _| match r.stash.take() {
        Some((stashed, value)) if same_tid(stashed, ctid) => Ok(value),
        _ => Err(Error::Internal(
            "re-sealed envelope does not belong to the row being updated".into(),
        )),
    })
}

/// The target list of a jsonb rotation: the stored envelope with the three fields
/// `_credential_reencrypt_row_jsonb` just re-sealed for this row, every other field kept.
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    schema = "credential_rotate"
)]
fn _credential_reencrypt_take_jsonb(ctid: pg_sys::ItemPointerData, secret: RawJsonb) -> RawJsonb {
    let parts = match take_stashed("_credential_reencrypt_take_jsonb", ctid) {
        Ok(Stashed::Parts(parts)) => parts,
        Ok(Stashed::Text(_)) => {
            Error::Internal("a text envelope stashed for a jsonb row".into()).report()
        }
        Err(e) => e.report(),
    };
    // SAFETY: the qual decoded all three fields from this same value of this same row.
    let value = unsafe { secret.with_parts(&parts) };
    // SAFETY: a jsonb datum just made, in this function's memory context.
    written::record("_credential_reencrypt_take_jsonb", unsafe {
        value.payload()
    })
    .or_report();
    value
}

/// The target list of a rotation: the envelope `_credential_reencrypt_row` just re-sealed.
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    schema = "credential_rotate"
)]
fn _credential_reencrypt_take(ctid: pg_sys::ItemPointerData) -> DbText {
    match take_stashed("_credential_reencrypt_take", ctid) {
        // Back in the database encoding, which every character of it came from.
        Ok(Stashed::Text(envelope)) => {
            let value = DbText::from_utf8(&envelope, "the envelope").or_report();
            written::record("_credential_reencrypt_take", value.bytes()).or_report();
            value
        }
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
    Error::from(TargetError::Row {
        pk: target.describe_row(tableoid, ctid),
        table: target.relation.clone(),
        reason,
    })
    .report()
}

fn same_tid(a: pg_sys::ItemPointerData, b: pg_sys::ItemPointerData) -> bool {
    pgrx::itemptr::item_pointer_to_u64(a) == pgrx::itemptr::item_pointer_to_u64(b)
}
