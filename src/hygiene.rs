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
//! statement that names one of the extension's key-taking functions; that needs the library
//! loaded in the backend, which `session_preload_libraries` guarantees (docs/security.md).
//! Only those names count: the application's own queries on `credential_profiles` must keep
//! their `STATEMENT:` line, or a failing one could not be diagnosed from the log.

use pgrx::pg_sys;
use std::cell::Cell;

thread_local! {
    /// Start timestamp of the last client statement that passed a key to the extension.
    static MARKED_STATEMENT: Cell<Option<pg_sys::TimestampTz>> = const { Cell::new(None) };
}

static mut PREVIOUS_HOOK: pg_sys::emit_log_hook_type = None;

/// The SQL functions and procedures that take a key argument, lower case. A statement naming
/// one may carry a key in its text even if it fails before the function runs.
const KEY_TAKING_FUNCTIONS: &[&[u8]] = &[
    b"credential_reencrypt",
    b"credential_reencrypt_value",
    b"credential_reencrypt_batched",
    b"credential_verify",
    b"credential_verify_rows",
    b"credential_encrypt",
    b"credential_decrypt",
    b"credential_key_fingerprint",
    b"credential_key_census",
    b"_credential_check_keys",
    b"_credential_batched_start",
    b"_credential_reencrypt_batch",
    b"_credential_reencrypt_batched",
];

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

fn statement_names_key_taking_function() -> bool {
    // SAFETY: debug_query_string is NULL or the NUL-terminated text of the current statement.
    let text = unsafe { pg_sys::debug_query_string };
    if text.is_null() {
        return false;
    }
    names_key_taking_function(unsafe { std::ffi::CStr::from_ptr(text) }.to_bytes())
}

/// Bytes the scanner of Postgres accepts inside an identifier; bytes of multibyte characters
/// count too, so `credential_decryptä` is one (other) name.
fn is_identifier_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Whether `text` holds one of [`KEY_TAKING_FUNCTIONS`] as a whole identifier, in any case,
/// bare, quoted or schema-qualified. Runs for every log line, so it walks the text once and
/// allocates nothing. It does not skip string literals or comments: a name there also hides
/// the statement, the safe way to err.
fn names_key_taking_function(text: &[u8]) -> bool {
    // eq_ignore_ascii_case compares the lengths first: most words cost one comparison per name.
    text.split(|&b| !is_identifier_byte(b)).any(|word| {
        KEY_TAKING_FUNCTIONS
            .iter()
            .any(|name| word.eq_ignore_ascii_case(name))
    })
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn hide_statement_hook(edata: *mut pg_sys::ErrorData) {
    // SAFETY: Postgres passes the error being emitted; it is valid for this call.
    unsafe {
        if !edata.is_null() && (statement_is_marked() || statement_names_key_taking_function()) {
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

#[cfg(test)]
mod tests {
    use super::names_key_taking_function as names;

    #[test]
    fn every_key_taking_function_is_named_in_any_spelling() {
        for name in super::KEY_TAKING_FUNCTIONS {
            let name = std::str::from_utf8(name).unwrap(); // ok: the list is ASCII
            let upper = name.to_ascii_uppercase();
            for text in [
                format!("SELECT * FROM {name}('k', 'k')"),
                format!("select * from public.{name}(old_key => 'k')"),
                format!("SELECT \"{name}\"('k')"),
                format!("SELECT myschema.\"{name}\"\n('k')"),
                format!("CALL {upper}('k','k')"),
                name.to_owned(),
            ] {
                assert!(names(text.as_bytes()), "{text}");
            }
        }
    }

    #[test]
    fn application_queries_and_other_names_are_not_matched() {
        for text in [
            "SELECT * FROM credential_profiles WHERE id = (1/0)::text",
            "UPDATE credential_profiles SET secret = $1 WHERE id = $2",
            "INSERT INTO credential_rotation_audit VALUES (1)",
            "SELECT credential_generate_key()",
            "SELECT credential_reencrypt_row(1)",
            "SELECT my_credential_reencrypt('k', 'k')",
            "SELECT credential_reencrypt2('k', 'k')",
            "SELECT credential_decrypt$x('k')",
            "SELECT credential_verifyä('k')",
            "SELECT credential_encryp('k')",
            "SELECT 1",
            "",
        ] {
            assert!(!names(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn a_name_among_other_statements_or_in_a_literal_still_counts() {
        assert!(names(b"SELECT 1/0; SELECT credential_reencrypt('k', 'k')"));
        assert!(names(b"SELECT 'credential_decrypt'"));
        assert!(names(b"DO $$ BEGIN PERFORM credential_verify('k'); END $$"));
    }
}
