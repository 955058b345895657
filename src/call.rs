//! The backend-local state of one `credential_reencrypt` / `credential_verify` /
//! `credential_key_census` call, which its per-row helpers find while the executor drives
//! them (with the rows each of its keys opened), and the audit record a finished
//! rotation hands to `_credential_audit_append`.
//!
//! Two rules keep this state sound when Postgres raises:
//!
//! - No Postgres call that can raise runs while a `RefCell` borrow of this state is live: a
//!   raise longjmps (or unwinds) past the borrow. Callers copy out what they need with
//!   [`with_active`] (the ciphers are reference-counted for that), release the borrow, then
//!   talk to Postgres. Even a NOTICE can raise: `errfinish` runs `CHECK_FOR_INTERRUPTS`.
//! - The state is wiped on every exit path: by the guards' `Drop` on return and on unwinding,
//!   and, for any path that skips Rust destructors, by transaction and subtransaction abort
//!   callbacks registered in `_PG_init`. A call's state never outlives the (sub)transaction
//!   that started it, so a later call in the same session starts clean and an aborted
//!   rotation's audit record can never be appended.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use pgrx::pg_sys;

use crate::envelope::{Cipher, EncodedParts, KeyRing, Rotator};
use crate::error::Error;
use crate::target::Target;

#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub scanned: i64,
    pub updated: i64,
    pub already_current: i64,
    pub empty: i64,
    /// A verification's rows that open with its key.
    pub readable: i64,
    /// A census's or verification's rows that open with none of its keys, and its malformed
    /// ones.
    pub not_readable: i64,
    pub malformed: i64,
}

/// What the call does with each row. The ciphers are shared so that a helper can use them
/// after releasing its borrow of the call state.
pub enum Work {
    Rotate {
        rotator: Rc<Rotator>,
        dry_run: bool,
    },
    Verify {
        cipher: Rc<Cipher>,
    },
    /// `credential_key_census`: which of several keys opens each row.
    Census {
        keys: Rc<KeyRing>,
    },
}

impl Work {
    /// How many keys rows are counted against: a rotation's old keys, a census's keys.
    fn keys(&self) -> usize {
        match self {
            Work::Rotate { rotator, .. } => rotator.old_keys(),
            Work::Census { keys } => keys.len(),
            Work::Verify { .. } => 0,
        }
    }
}

/// A re-sealed value waiting for the target list of the row whose qual produced it.
pub enum Stashed {
    /// A whole envelope as JSON text (json and text columns).
    Text(String),
    /// The three re-sealed fields, to be spliced into the stored jsonb.
    Parts(EncodedParts),
}

pub struct ActiveCall {
    pub work: Work,
    pub target: Rc<Target>,
    pub counts: Counts,
    /// Rows opened by each key of [`Work::keys`], in the order the keys were given.
    pub opened_by: Vec<i64>,
    /// The re-sealed envelope of the row whose qual just passed, waiting for its target list.
    pub stash: Option<(pg_sys::ItemPointerData, Stashed)>,
    /// The value the target list has just written, waiting for the RETURNING row that shows
    /// it as stored ([`crate::written`]); the buffer is reused from row to row.
    pub written: Vec<u8>,
    pub written_pending: bool,
    /// Rows whose stored value was checked to be the one written.
    pub confirmed: i64,
    pub started: Instant,
    /// Rows between progress NOTICEs, 0 for none.
    pub progress_every: i64,
    /// The subtransaction the call started in: its abort (or an ancestor's) ends the call.
    subxact: pg_sys::SubTransactionId,
}

/// What the audit row of a finished rotation records, handed from the rotation to the
/// SECURITY DEFINER `_credential_audit_append` through backend-local state rather than as
/// arguments, so that a role allowed to call it cannot write an audit row of its own making.
pub struct AuditRecord {
    pub ext_schema: String,
    pub rotated_by: String,
    pub target_table: String,
    pub secret_column: String,
    pub counts: Counts,
    /// Each old key's fingerprint and the rows it opened, in the order the keys were given.
    pub opened_by: Vec<(String, i64)>,
    pub old_fingerprint: String,
    pub new_fingerprint: String,
}

struct Pending {
    record: AuditRecord,
    subxact: pg_sys::SubTransactionId,
}

thread_local! {
    static ACTIVE: RefCell<Option<ActiveCall>> = const { RefCell::new(None) };
    static PENDING_AUDIT: RefCell<Option<Pending>> = const { RefCell::new(None) };
}

fn current_subxact() -> pg_sys::SubTransactionId {
    // SAFETY: reads backend-local transaction state; cannot raise.
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

/// Owns the active call for the duration of one top-level function call; dropping it removes
/// the keys from the backend (the ciphers' key schedules are wiped as they drop).
pub struct CallGuard(());

/// Makes `work` on `target` this backend's active call. Refuses a nested call: the helpers of
/// the outer call would otherwise see the inner call's keys.
pub fn install(work: Work, target: Rc<Target>) -> Result<CallGuard, Error> {
    let subxact = current_subxact();
    let progress_every = i64::from(crate::PROGRESS_ROWS.get());
    ACTIVE.with(|a| {
        let mut slot = a.try_borrow_mut().map_err(|_| Error::Nested)?;
        if slot.is_some() {
            return Err(Error::Nested);
        }
        let opened_by = vec![0; work.keys()];
        *slot = Some(ActiveCall {
            work,
            target,
            counts: Counts::default(),
            opened_by,
            stash: None,
            written: Vec::new(),
            written_pending: false,
            confirmed: 0,
            started: Instant::now(),
            progress_every,
            subxact,
        });
        Ok(CallGuard(()))
    })
}

impl CallGuard {
    pub fn counts(&self) -> Counts {
        ACTIVE.with(|a| {
            a.try_borrow()
                .ok()
                .and_then(|slot| slot.as_ref().map(|c| c.counts))
                .unwrap_or_default()
        })
    }

    /// Rows opened by each key so far, in the order the keys were given.
    pub fn opened_by(&self) -> Vec<i64> {
        ACTIVE.with(|a| {
            a.try_borrow()
                .ok()
                .and_then(|slot| slot.as_ref().map(|c| c.opened_by.clone()))
                .unwrap_or_default()
        })
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        wipe_active(None);
    }
}

/// Runs `f` on the active call, borrowed for the duration of `f` only. `f` must not call
/// Postgres. `helper` names the SQL function for the error when no call is active.
pub fn with_active<R>(
    helper: &'static str,
    f: impl FnOnce(&mut ActiveCall) -> Result<R, Error>,
) -> Result<R, Error> {
    ACTIVE.with(|a| {
        let mut slot = a
            .try_borrow_mut()
            .map_err(|_| Error::Internal("the call state is in use".into()))?;
        f(slot.as_mut().ok_or(Error::NotInCall(helper))?)
    })
}

/// Removes the active call: any call (`None`), or only one started in subtransaction
/// `from` or a later one (a subtransaction that is aborting, and its children).
fn wipe_active(from: Option<pg_sys::SubTransactionId>) {
    let taken = ACTIVE.with(|a| {
        a.try_borrow_mut().ok().and_then(|mut slot| {
            let ends = slot
                .as_ref()
                .is_some_and(|c| from.is_none_or(|s| c.subxact >= s));
            if ends {
                slot.take()
            } else {
                None
            }
        })
    });
    // Dropped outside the borrow: dropping wipes the key schedules.
    drop(taken);
}

/// Holds the audit record of a finished rotation while its `_credential_audit_append` runs;
/// dropping it (on return or unwinding) withdraws a record that was not taken.
pub struct AuditGuard(());

pub fn set_pending_audit(record: AuditRecord) -> AuditGuard {
    let pending = Pending {
        record,
        subxact: current_subxact(),
    };
    PENDING_AUDIT.with(|p| {
        if let Ok(mut slot) = p.try_borrow_mut() {
            *slot = Some(pending);
        }
    });
    AuditGuard(())
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        wipe_pending(None);
    }
}

/// The audit record a rotation of this backend has just handed over, if any.
pub fn take_pending_audit() -> Option<AuditRecord> {
    PENDING_AUDIT.with(|p| p.try_borrow_mut().ok()?.take().map(|p| p.record))
}

fn wipe_pending(from: Option<pg_sys::SubTransactionId>) {
    PENDING_AUDIT.with(|p| {
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

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    // No call outlives its transaction, committed or not.
    if matches!(
        event,
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_COMMIT | XACT_EVENT_PREPARE
    ) {
        wipe_active(None);
        wipe_pending(None);
        crate::table_code::clear();
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    // A savepoint or PL/pgSQL exception block that catches a failed call: the call is over.
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        wipe_active(Some(my_subid));
        wipe_pending(Some(my_subid));
    }
}

/// Registers the abort callbacks; called once per backend from `_PG_init`.
pub fn register_callbacks() {
    // SAFETY: _PG_init runs once per backend, before any of our functions.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}
