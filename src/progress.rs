//! The NOTICEs a rotation sends while it runs: progress every `credential_rotate.progress_rows`
//! rows, and the rows each old key opened at the end of a rotation from several old keys.

use pgrx::prelude::*;

use std::time::Instant;

use crate::call::Counts;
use crate::target::Target;

/// A NOTICE, built (under the borrow of the call state, for progress) and emitted after.
pub struct Notice {
    message: String,
    detail: String,
}

/// Rows and the estimated total in the message, the rate in the DETAIL (kept apart so that
/// the message itself is stable enough for a test to match).
pub fn progress_notice(counts: Counts, target: &Target, started: Instant) -> Notice {
    let scanned = counts.scanned;
    let message = match target.estimated_rows {
        Some(total) => format!(
            "credential_reencrypt: {scanned} of about {total} rows of {} scanned",
            target.relation
        ),
        None => format!(
            "credential_reencrypt: {scanned} rows of {} scanned",
            target.relation
        ),
    };
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let detail = format!(
        "{} re-sealed so far, {:.0} rows/s",
        counts.updated,
        scanned as f64 / seconds
    );
    Notice { message, detail }
}

impl Notice {
    pub fn new(message: String, detail: &str) -> Notice {
        Notice {
            message,
            detail: detail.to_owned(),
        }
    }

    pub fn report(self) {
        let mut report = pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            self.message,
            "credential_rotate",
        );
        if !self.detail.is_empty() {
            report = report.set_detail(self.detail);
        }
        // errfinish() runs CHECK_FOR_INTERRUPTS after a NOTICE: a cancel or statement_timeout
        // arriving then raises from inside it. pgrx's NOTICE path is not guarded, so without
        // the boundary that ERROR would longjmp over our Rust frames; with it, it unwinds them.
        // SAFETY: called on the backend's main thread, from a function pgrx guards.
        unsafe {
            pgrx::pg_sys::ffi::pg_guard_ffi_boundary(|| report.report(PgLogLevel::NOTICE));
        }
    }
}

/// The final NOTICE of a rotation from several old keys: the rows each one opened.
pub fn opened_by_notice(opened_by: &[(String, i64)], updated: i64, dry_run: bool) -> Notice {
    let by_key = opened_by
        .iter()
        .map(|(fingerprint, rows)| format!("{rows} with old key {fingerprint}"))
        .collect::<Vec<_>>()
        .join(", ");
    let verb = if dry_run {
        "would re-seal"
    } else {
        "re-sealed"
    };
    Notice {
        message: format!("credential_reencrypt {verb} {updated} rows, opened {by_key}"),
        detail: "Keys are named by their fingerprint, as credential_key_fingerprint() gives it."
            .into(),
    }
}
