//! A rotation's count is checked, not assumed: "updated" means the new value is what is stored.
//!
//! The rotation's `UPDATE … RETURNING col, tableoid, ctid` hands each row, as it was stored
//! after any BEFORE trigger, to a receiver that compares it byte for byte with the value the
//! target list has just written ([`record`]). A trigger that keeps the old secret (`NEW.secret
//! := OLD.secret`) or writes another fails the call naming the row; one that skips the row
//! (`RETURN NULL`) leaves a written value that no RETURNING row confirms, and the call fails
//! too. Either way nothing changes: the error rolls the statement back.
//!
//! The rows go to the receiver as the executor produces them (SPI's `dest` option), never into
//! an SPI result table, so memory stays flat however large the table.

use pgrx::pg_sys;

use crate::call;
use crate::error::{Error, OrReport};

/// What the target list just wrote: `value`'s payload, kept until the RETURNING row of the
/// same tuple compares it. A value still pending belongs to a row a trigger skipped.
pub fn record(helper: &'static str, value: &[u8]) -> Result<(), Error> {
    call::with_rotation(helper, |r, target, _| {
        if r.written_pending {
            return Err(Error::RowsSkipped {
                table: target.relation.clone(),
            });
        }
        r.written.clear();
        r.written.extend_from_slice(value);
        r.written_pending = true;
        Ok(())
    })
}

/// The payload of a varlena datum: the bytes after its header, detoasted if it was compressed
/// or stored out of line (only a trigger's value can be; those bytes are then in the current
/// memory context).
///
/// # Safety
/// `datum` must be a valid varlena datum.
unsafe fn payload<'a>(datum: pg_sys::Datum) -> &'a [u8] {
    // SAFETY: forwarded to the caller; a detoasted copy has a plain header.
    unsafe {
        let mut ptr = datum.cast_mut_ptr::<pg_sys::varlena>();
        if pgrx::varlena::varatt_is_1b_e(ptr) || pgrx::varlena::varatt_is_4b_c(ptr) {
            ptr = pg_sys::pg_detoast_datum_packed(ptr);
        }
        std::slice::from_raw_parts(
            pgrx::varlena::vardata_any(ptr).cast(),
            pgrx::varlena::varsize_any_exhdr(ptr),
        )
    }
}

#[repr(C)]
struct Receiver {
    /// First, so that Postgres' `DestReceiver *` is a pointer to the whole struct.
    base: pg_sys::DestReceiver,
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn receive_slot(
    slot: *mut pg_sys::TupleTableSlot,
    _receiver: *mut pg_sys::DestReceiver,
) -> bool {
    let (mut null, mut oid_null, mut tid_null) = (false, false, false);
    // SAFETY: the RETURNING list is (col, tableoid, ctid), all three in the slot; a non-null
    // column value is a varlena (jsonb, json or text), tableoid an oid, ctid a pointer to a tid.
    let (stored, tableoid, ctid) = unsafe {
        let value = pg_sys::slot_getattr(slot, 1, &mut null);
        let tableoid = pg_sys::slot_getattr(slot, 2, &mut oid_null);
        let ctid = pg_sys::slot_getattr(slot, 3, &mut tid_null);
        let stored = (!null).then(|| payload(value));
        (
            stored,
            pg_sys::Oid::from(tableoid.value() as u32),
            *ctid.cast_mut_ptr::<pg_sys::ItemPointerData>(),
        )
    };
    let checked = call::with_rotation("the rotation's RETURNING check", |r, target, _| {
        let same = r.written_pending && stored == Some(r.written.as_slice());
        r.written_pending = false;
        if same {
            r.confirmed += 1;
        }
        Ok((same, std::rc::Rc::clone(target)))
    })
    .or_report();
    match checked {
        (true, _) => true,
        (false, target) => Error::Overwritten {
            pk: target.describe_row(tableoid, ctid),
            table: target.relation.clone(),
        }
        .report(),
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup(
    _receiver: *mut pg_sys::DestReceiver,
    _operation: std::ffi::c_int,
    _typeinfo: pg_sys::TupleDesc,
) {
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn nothing(_receiver: *mut pg_sys::DestReceiver) {}

/// Runs the rotation's `UPDATE … RETURNING` (`statement`, in the database encoding) with each
/// row checked as it is stored; returns the rows it updated. Must run inside an SPI connection
/// and the active call of the rotation.
pub fn execute(statement: &std::ffi::CStr) -> Result<i64, Error> {
    let mut receiver = Receiver {
        base: pg_sys::DestReceiver {
            receiveSlot: Some(receive_slot),
            rStartup: Some(startup),
            rShutdown: Some(nothing),
            rDestroy: Some(nothing),
            mydest: pg_sys::CommandDest::DestNone,
        },
    };
    let options = pg_sys::SPIExecuteOptions {
        dest: &mut receiver.base,
        ..Default::default()
    };
    // SAFETY: SPI is connected (the caller's Spi::connect); the receiver outlives the call.
    let status = unsafe { pg_sys::SPI_execute_extended(statement.as_ptr(), &options) };
    if status != pg_sys::SPI_OK_UPDATE_RETURNING as i32 {
        return Err(Error::Internal(format!(
            "the rotation statement ended with SPI status {status}"
        )));
    }
    // SAFETY: set by the SPI_execute_extended just above.
    Ok(unsafe { pg_sys::SPI_processed } as i64)
}

/// After the statement: every row written was confirmed as stored (`updated` of them).
pub fn confirm_all(updated: i64) -> Result<(), Error> {
    call::with_rotation("the rotation's RETURNING check", |r, target, _| {
        if r.written_pending || r.confirmed != updated {
            Err(Error::RowsSkipped {
                table: target.relation.clone(),
            })
        } else {
            Ok(())
        }
    })
}
