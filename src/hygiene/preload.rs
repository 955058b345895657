//! The one thing the hooks cannot do: mask what is logged before the library is loaded. A
//! session loads it on the first call of one of its functions, after `log_statement` has
//! written that statement's text and pgaudit has audited it; only a preload
//! (`session_preload_libraries` or `shared_preload_libraries`) loads it in time. So
//! `CREATE EXTENSION` and the first call of a session warn, once, when the library is not
//! preloaded and a setting that logs statements that early is on, with the command to run.

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;

const LIBRARY: &str = "credential_rotate";

/// A setting's current value as `SHOW` gives it; `None` when it does not exist.
fn setting(name: &CStr) -> Option<String> {
    // SAFETY: GetConfigOption with missing_ok returns NULL or a string valid until the
    // setting changes; it is copied at once.
    unsafe {
        let value = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        (!value.is_null()).then(|| CStr::from_ptr(value).to_string_lossy().into_owned())
    }
}

/// The settings on that log a statement's text before the library is loaded in a session.
fn early_logging() -> Vec<String> {
    let mut on = Vec::new();
    if let Some(value) = setting(c"log_statement").filter(|v| v == "all" || v == "mod") {
        on.push(format!("log_statement = '{value}'"));
    }
    if let Some(value) = setting(c"pgaudit.log").filter(|v| !v.trim().eq_ignore_ascii_case("none"))
    {
        on.push(format!("pgaudit.log = '{value}'"));
    }
    on
}

fn lists_library(list: &str) -> bool {
    list.split(',').any(|entry| {
        let entry = entry.trim().trim_matches('"');
        entry == LIBRARY || entry.ends_with(&format!("/{LIBRARY}"))
    })
}

/// Whether new sessions preload the library, as far as this session's settings tell.
fn configured() -> bool {
    [c"session_preload_libraries", c"shared_preload_libraries"]
        .into_iter()
        .filter_map(setting)
        .any(|list| lists_library(&list))
}

/// The command that adds the library to `session_preload_libraries`, keeping what is there.
fn preload_command() -> String {
    let current = setting(c"session_preload_libraries").unwrap_or_default();
    let list = if current.trim().is_empty() {
        LIBRARY.to_owned()
    } else {
        format!("{current}, {LIBRARY}")
    };
    format!(
        "ALTER SYSTEM SET session_preload_libraries = '{}'; SELECT pg_reload_conf();",
        list.replace('\'', "''")
    )
}

fn warn(message: String) {
    let report = pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_WARNING,
        message,
        "credential_rotate",
    )
    .set_hint(format!(
        "Preload the library so that it masks keys from the first statement of every session: {} New sessions load it.",
        preload_command()
    ));
    // errfinish() services interrupts after a WARNING: see progress.rs.
    // SAFETY: called on the backend's main thread, from a function pgrx guards.
    unsafe {
        pgrx::pg_sys::ffi::pg_guard_ffi_boundary(|| report.report(PgLogLevel::WARNING));
    }
}

/// At `CREATE EXTENSION`, when new sessions will not preload the library.
pub fn warn_on_create_extension() {
    let on = early_logging();
    if on.is_empty() || configured() {
        return;
    }
    warn(format!(
        "credential_rotate is not preloaded: with {} the first statement of a session that passes keys to it is logged, keys included, before the library is loaded to mask them",
        on.join(" and ")
    ));
}

/// At the first call of a session that did not preload the library.
pub fn warn_on_first_call() {
    let on = early_logging();
    if on.is_empty() {
        return;
    }
    warn(format!(
        "the server log may hold this statement's keys: {} logged it before credential_rotate was loaded",
        on.join(" and ")
    ));
}

#[cfg(test)]
mod tests {
    use super::lists_library;

    #[test]
    fn library_lists() {
        assert!(lists_library("credential_rotate"));
        assert!(lists_library("auto_explain, \"$libdir/credential_rotate\""));
        assert!(!lists_library("credential_rotate_old, pg_stat_statements"));
        assert!(!lists_library(""));
    }
}
