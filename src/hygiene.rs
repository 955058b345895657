//! Keeping the keys out of the server log.
//!
//! A call like `SELECT credential_reencrypt('<old>', '<new>')` carries both keys in its text.
//! When a statement fails, Postgres writes its text to the server log as a `STATEMENT:` line
//! (`log_min_error_statement`, default `error`). Postgres offers `errhidestmt()` to suppress
//! that line, but it has to be set on the error itself, and many errors in such a statement are
//! not ours (a lock timeout, a cancel, a constraint violation in a trigger).
//!
//! So every function that receives a key marks the current statement, and an `emit_log_hook`
//! sets `hide_stmt` on any report emitted while that statement is still the current one. The
//! statement is identified by its start timestamp, which Postgres sets once per client
//! statement and keeps across the error recovery that emits the report.
//!
//! Some errors come before any of our code runs (permission denied for the function, a
//! misspelt argument name). As a safety net the hook also hides the text of any failing
//! statement that mentions `credential_`; that needs the library loaded in the backend, which
//! `session_preload_libraries` guarantees (README, "Security").

use pgrx::pg_sys;
use std::cell::Cell;

thread_local! {
    /// Start timestamp of the last client statement that passed a key to the extension.
    static MARKED_STATEMENT: Cell<Option<pg_sys::TimestampTz>> = const { Cell::new(None) };
}

static mut PREVIOUS_HOOK: pg_sys::emit_log_hook_type = None;

/// Records that the current statement's text may hold a key.
pub fn mark_statement() {
    // SAFETY: reads a backend-local timestamp; always valid inside a transaction.
    let now = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
    MARKED_STATEMENT.with(|m| m.set(Some(now)));
}

fn statement_is_marked() -> bool {
    let marked = MARKED_STATEMENT.with(Cell::get);
    // SAFETY: as above.
    marked.is_some_and(|ts| ts == unsafe { pg_sys::GetCurrentStatementStartTimestamp() })
}

fn statement_mentions_extension() -> bool {
    // SAFETY: debug_query_string is NULL or the NUL-terminated text of the current statement.
    let text = unsafe { pg_sys::debug_query_string };
    if text.is_null() {
        return false;
    }
    let bytes = unsafe { std::ffi::CStr::from_ptr(text) }.to_bytes();
    bytes
        .windows(NEEDLE.len())
        .any(|w| w.eq_ignore_ascii_case(NEEDLE))
}

const NEEDLE: &[u8] = b"credential_";

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn hide_statement_hook(edata: *mut pg_sys::ErrorData) {
    // SAFETY: Postgres passes the error being emitted; it is valid for this call.
    unsafe {
        if !edata.is_null() && (statement_is_marked() || statement_mentions_extension()) {
            (*edata).hide_stmt = true;
            // A call made from PL/pgSQL or EXECUTE shows its text in the CONTEXT line too.
            (*edata).hide_ctx = true;
        }
        if let Some(previous) = PREVIOUS_HOOK {
            previous(edata);
        }
    }
}

/// Installs the hook; called once from `_PG_init`.
pub fn install() {
    // SAFETY: _PG_init runs once per backend, single-threaded, before any of our functions.
    unsafe {
        PREVIOUS_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(hide_statement_hook);
    }
}
