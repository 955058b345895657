//! The backend-local state of one `credential_reencrypt` / `credential_verify` /
//! `credential_key_census` call, which its per-row helpers find while the executor drives
//! them. Each kind of call carries its own state: a rotation its ciphers, counts, the value
//! waiting for its target list and the one waiting for its RETURNING check; a verification its
//! cipher and counts; a census its keys and counts.
//!
//! Two rules keep this state sound when Postgres raises:
//!
//! - No Postgres call that can raise runs while a `RefCell` borrow of this state is live: a
//!   raise longjmps (or unwinds) past the borrow. Callers copy out what they need with the
//!   `with_*` functions (the ciphers are reference-counted for that), release the borrow, then
//!   talk to Postgres. Even a NOTICE can raise: `errfinish` runs `CHECK_FOR_INTERRUPTS`.
//! - The state is wiped on every exit path: by the guard's `Drop` on return and on unwinding,
//!   and, for any path that skips Rust destructors, by transaction and subtransaction abort
//!   callbacks registered in `_PG_init` (which also end the audit hand-off and the code guard
//!   of the same call). A call's state never outlives the (sub)transaction that started it,
//!   so a later call in the same session starts clean.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use pgrx::pg_sys;

use crate::envelope::{Cipher, EncodedParts, KeyRing, Rotator};
use crate::error::Error;
use crate::target::Target;

/// A rotation's counts: `scanned = updated + already_current + empty`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub scanned: i64,
    pub updated: i64,
    pub already_current: i64,
    pub empty: i64,
}

/// How the rows of a verification or census fared.
#[derive(Debug, Default, Clone, Copy)]
pub struct Statuses {
    pub readable: i64,
    pub not_readable: i64,
    pub empty: i64,
    pub malformed: i64,
}

/// A re-sealed value waiting for the target list of the row whose qual produced it.
pub enum Stashed {
    /// A whole envelope as JSON text (json and text columns).
    Text(String),
    /// The three re-sealed fields, to be spliced into the stored jsonb.
    Parts(EncodedParts),
}

/// The state of a rotation (or of its dry run).
pub struct Rotating {
    pub rotator: Rc<Rotator>,
    pub dry_run: bool,
    pub counts: Counts,
    /// Rows opened by each old key, in the order the keys were given.
    pub opened_by: Vec<i64>,
    /// The re-sealed envelope of the row whose qual just passed, waiting for its target list.
    pub stash: Option<(pg_sys::ItemPointerData, Stashed)>,
    /// The value the target list has just written, waiting for the RETURNING row that shows
    /// it as stored ([`crate::written`]); the buffer is reused from row to row.
    pub written: Vec<u8>,
    pub written_pending: bool,
    /// Rows whose stored value was checked to be the one written.
    pub confirmed: i64,
    /// Rows between progress NOTICEs, 0 for none.
    pub progress_every: i64,
}

impl Rotating {
    pub fn new(rotator: Rc<Rotator>, dry_run: bool) -> Rotating {
        let opened_by = vec![0; rotator.old_keys()];
        Rotating {
            rotator,
            dry_run,
            counts: Counts::default(),
            opened_by,
            stash: None,
            written: Vec::new(),
            written_pending: false,
            confirmed: 0,
            progress_every: crate::settings::progress_rows(),
        }
    }
}

/// The state of a verification under one key.
pub struct Verifying {
    pub cipher: Rc<Cipher>,
    pub statuses: Statuses,
}

/// The state of a census: which of several keys opens each row.
pub struct Counting {
    pub keys: Rc<KeyRing>,
    /// Rows opened by each key, in the order the keys were given; `statuses.readable` unused.
    pub opened_by: Vec<i64>,
    pub statuses: Statuses,
}

pub enum Work {
    Rotate(Rotating),
    Verify(Verifying),
    Census(Counting),
}

pub struct ActiveCall {
    pub work: Work,
    pub target: Rc<Target>,
    pub started: Instant,
    /// The subtransaction the call started in: its abort (or an ancestor's) ends the call.
    subxact: pg_sys::SubTransactionId,
}

thread_local! {
    static ACTIVE: RefCell<Option<ActiveCall>> = const { RefCell::new(None) };
}

pub fn current_subxact() -> pg_sys::SubTransactionId {
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
    ACTIVE.with(|a| {
        let mut slot = a.try_borrow_mut().map_err(|_| Error::Nested)?;
        if slot.is_some() {
            return Err(Error::Nested);
        }
        *slot = Some(ActiveCall {
            work,
            target,
            started: Instant::now(),
            subxact,
        });
        Ok(CallGuard(()))
    })
}

impl CallGuard {
    /// Reads the finished call's state (its counts), with the same borrow rule as the helpers.
    pub fn read<R>(&self, f: impl FnOnce(&Work) -> R) -> Result<R, Error> {
        ACTIVE.with(|a| {
            let slot = a
                .try_borrow()
                .map_err(|_| Error::Internal("the call state is in use".into()))?;
            slot.as_ref()
                .map(|call| f(&call.work))
                .ok_or_else(|| Error::Internal("the call ended early".into()))
        })
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        wipe_active(None);
    }
}

/// Runs `f` on the active call, borrowed for the duration of `f` only. `f` must not call
/// Postgres. `helper` names the SQL function, `caller` the call it belongs to, for the error
/// when no such call is active.
pub fn with_active<R>(
    helper: &'static str,
    caller: &'static str,
    f: impl FnOnce(&mut ActiveCall) -> Result<R, Error>,
) -> Result<R, Error> {
    ACTIVE.with(|a| {
        let mut slot = a
            .try_borrow_mut()
            .map_err(|_| Error::Internal("the call state is in use".into()))?;
        f(slot.as_mut().ok_or(Error::NotInCall { helper, caller })?)
    })
}

/// As [`with_active`], on the active rotation only; also hands over the call's target.
pub fn with_rotation<R>(
    helper: &'static str,
    f: impl FnOnce(&mut Rotating, &Rc<Target>, Instant) -> Result<R, Error>,
) -> Result<R, Error> {
    const CALLER: &str = "credential_reencrypt";
    with_active(helper, CALLER, |call| match &mut call.work {
        Work::Rotate(r) => f(r, &call.target, call.started),
        Work::Verify(_) | Work::Census(_) => Err(Error::NotInCall {
            helper,
            caller: CALLER,
        }),
    })
}

/// As [`with_active`], on the active verification only.
pub fn with_verification<R>(
    helper: &'static str,
    f: impl FnOnce(&mut Verifying) -> Result<R, Error>,
) -> Result<R, Error> {
    const CALLER: &str = "credential_verify";
    with_active(helper, CALLER, |call| match &mut call.work {
        Work::Verify(v) => f(v),
        Work::Rotate(_) | Work::Census(_) => Err(Error::NotInCall {
            helper,
            caller: CALLER,
        }),
    })
}

/// As [`with_active`], on the active census only.
pub fn with_census<R>(
    helper: &'static str,
    f: impl FnOnce(&mut Counting) -> Result<R, Error>,
) -> Result<R, Error> {
    const CALLER: &str = "credential_key_census";
    with_active(helper, CALLER, |call| match &mut call.work {
        Work::Census(c) => f(c),
        Work::Rotate(_) | Work::Verify(_) => Err(Error::NotInCall {
            helper,
            caller: CALLER,
        }),
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

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    // No call outlives its transaction, committed or not.
    if matches!(
        event,
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_COMMIT | XACT_EVENT_PREPARE
    ) {
        wipe_active(None);
        crate::audit::wipe_pending(None);
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
        crate::audit::wipe_pending(Some(my_subid));
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
