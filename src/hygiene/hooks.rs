//! The hooks: parse analysis, executor start and `ProcessUtility` mask the statement text
//! they are handed before anything else reads it; `emit_log_hook` masks what a log line quotes.
//!
//! The executor, utility and parse-analysis hooks run for every statement. They do their work
//! in Rust that cannot raise, then call the next hook directly, not through pgrx's FFI guard:
//! an error raised further down must reach Postgres exactly as raised (with its context,
//! constraint name and position), so it passes through these frames, which hold nothing to
//! drop at that point. A panic in the Rust part is caught and ignored: masking is best effort,
//! the statement itself must never fail because of it.

use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pgrx::pg_sys;

use super::buffers::{
    active_portal_text, bytes_mut, client_statement_plan, cover_client_statement, cover_text,
    creating_extension, debug_query_string, mark_preloaded, standard_strings, statement_is_marked,
    with_statement_secrets,
};
use super::lines::{self, AuditRule};
use super::mask;

static mut PREVIOUS_EMIT_LOG: pg_sys::emit_log_hook_type = None;
static mut PREVIOUS_POST_PARSE_ANALYZE: pg_sys::post_parse_analyze_hook_type = None;
static mut PREVIOUS_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREVIOUS_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

// The standard implementations, called without pgrx's FFI guard (see the module comment).
unsafe extern "C-unwind" {
    #[link_name = "standard_ExecutorStart"]
    fn standard_executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: c_int);
    #[link_name = "standard_ProcessUtility"]
    #[allow(clippy::too_many_arguments)]
    fn standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// Runs the masking part of a hook: a panic there is caught and the statement goes on.
fn best_effort(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

/// Hides the statement and context lines of an error of a key-carrying statement (it is
/// reported after the call state is gone, so the marking is the only way to know), and masks
/// keys in every other line.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn emit_log(edata: *mut pg_sys::ErrorData) {
    if !edata.is_null() {
        // SAFETY: Postgres passes the report being emitted; valid for this call.
        best_effort(|| unsafe { mask_report(&mut *edata) });
    }
    // SAFETY: the previous hook, installed before ours, takes the same report.
    unsafe {
        if let Some(previous) = PREVIOUS_EMIT_LOG {
            previous(edata);
        }
    }
}

/// # Safety
/// `edata` is the report being emitted.
unsafe fn mask_report(edata: &mut pg_sys::ErrorData) {
    let fresh = cover_client_statement();
    let client_plan = client_statement_plan();
    let marked = statement_is_marked();
    if marked || client_plan.is_some() {
        edata.hide_stmt = true;
        // A call made from PL/pgSQL or EXECUTE shows its text in the CONTEXT line too.
        edata.hide_ctx = true;
    }
    // The report's strings: message, detail, detail_log, hint, context, internalquery.
    // SAFETY: each is NULL or NUL-terminated, palloc'd, and ours to rewrite for the duration
    // of the hook.
    let mut fields = unsafe {
        [
            edata.message,
            edata.detail,
            edata.detail_log,
            edata.hint,
            edata.context,
            edata.internalquery,
        ]
        .map(|p| bytes_mut(p))
    };
    if let Some(fresh) = &fresh {
        for field in fields.iter_mut().flatten() {
            lines::mask_quoted_statement(field, &fresh.original, &fresh.plan);
        }
    }
    // The DETAIL of a statement line lists its bound parameters.
    for field in fields[1..3].iter_mut().flatten() {
        match &client_plan {
            Some(plan) => lines::mask_parameters(field, |n| plan.shows_param(n)),
            None if marked => lines::mask_parameters(field, |_| false),
            None => {}
        }
    }
    if let Some(message) = fields[0].as_mut() {
        if marked || mask::names_key_taking_function(message) {
            lines::mask_plan_parameters(message);
        }
        if let Some(statement) = lines::audit_statement(message) {
            let rule = match mask::plan(&statement, standard_strings()) {
                Some(plan) => AuditRule::Plan(plan),
                // SAFETY: debug_query_string is NULL or the live statement text.
                None if marked && unsafe { client_text_is(&statement) } => AuditRule::AllParameters,
                None => AuditRule::Untouched,
            };
            lines::mask_audit_row(message, &rule);
        }
    }
    with_statement_secrets(|secrets| {
        for field in fields.iter_mut().flatten() {
            lines::mask_secrets(field, secrets.iter().map(|v| v.as_slice()));
        }
    });
}

/// # Safety
/// `debug_query_string` is NULL or live.
unsafe fn client_text_is(text: &[u8]) -> bool {
    let client = debug_query_string();
    // SAFETY: as the caller promises.
    !client.is_null() && unsafe { CStr::from_ptr(client) }.to_bytes() == text
}

unsafe extern "C-unwind" fn post_parse_analyze(
    pstate: *mut pg_sys::ParseState,
    query: *mut pg_sys::Query,
    jstate: *mut pg_sys::JumbleState,
) {
    // SAFETY: Postgres passes the parse state of the statement just analysed.
    best_effort(|| unsafe { cover_text((*pstate).p_sourcetext) });
    // SAFETY: the previous hook takes the same arguments; nothing of ours is live here.
    unsafe {
        if let Some(previous) = PREVIOUS_POST_PARSE_ANALYZE {
            previous(pstate, query, jstate);
        }
    }
}

/// At executor or utility start: the client statement's text and the portal's copy of it
/// (the extended protocol's). A statement a function runs (SPI) was masked at its parse
/// analysis; checking it again at every execution of a statement in a PL/pgSQL loop would
/// cost time for the one case it adds: the saved copy of a statement of a function's body
/// with a key written into it, which the function's catalog entry shows anyway.
fn cover_client_copy(text: *const c_char) {
    cover_client_statement();
    if text == active_portal_text() {
        cover_text(text);
    }
}

unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: c_int) {
    // SAFETY: Postgres passes the query about to start.
    best_effort(|| cover_client_copy(unsafe { (*query_desc).sourceText }));
    // SAFETY: as for post_parse_analyze.
    unsafe {
        match PREVIOUS_EXECUTOR_START {
            Some(previous) => previous(query_desc, eflags),
            None => standard_executor_start(query_desc, eflags),
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    best_effort(|| cover_client_copy(query_string));
    // SAFETY: as for post_parse_analyze.
    unsafe {
        match PREVIOUS_PROCESS_UTILITY {
            Some(previous) => previous(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => standard_process_utility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}

/// Installs the hooks; called once from `_PG_init`.
pub fn install() {
    // SAFETY: _PG_init runs once per backend, single-threaded, before any of our functions.
    unsafe {
        mark_preloaded(
            pg_sys::process_shared_preload_libraries_in_progress
                || pg_sys::debug_query_string.is_null(),
        );
        PREVIOUS_EMIT_LOG = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(emit_log);
        PREVIOUS_POST_PARSE_ANALYZE = pg_sys::post_parse_analyze_hook;
        pg_sys::post_parse_analyze_hook = Some(post_parse_analyze);
        PREVIOUS_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREVIOUS_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
    if creating_extension() {
        super::preload::warn_on_create_extension();
    }
}
