//! Keeping keys out of every place a statement's text goes: the server log, `pg_stat_activity`,
//! `pg_stat_statements`, auto_explain, pgaudit, the postmaster's crash line and other
//! backends' deadlock reports.
//!
//! A call like `SELECT credential_reencrypt('<old>', '<new>')` carries both keys in its text,
//! and Postgres hands that text around. So the text is masked in place, as early as possible:
//! every literal in a key (or plaintext) argument of a key-taking function, every literal
//! shaped like a key in a statement that names one, and, once one of our functions has
//! received its keys, every occurrence of them anywhere in the statement (a wrapper of another
//! name, a prepared statement's `EXECUTE`). Masked bytes become `*`: the text keeps its length
//! and its structure, so a DBA still sees which call runs on which table, and every offset
//! into it (error positions, `pg_stat_statements`' constant locations) stays valid.
//!
//! - [`mask`] decides which bytes to mask; [`scan`] is the lexer it uses; [`lines`] applies
//!   the same masking inside log lines (quoted statements, bound parameter values, pgaudit
//!   rows). All three are plain Rust that cannot fail: they also run inside `emit_log_hook`.
//! - [`hooks`] masks the buffers: at parse analysis, executor and utility start, when a log
//!   line quotes a text not masked yet, and when one of our functions starts.
//! - [`preload`] warns when lines are logged before the library is loaded in a session.
//!
//! Errors keep their older, stricter treatment: when a statement that passed a key to the
//! extension fails, or a failing statement names a key-taking function, its `STATEMENT:` and
//! `CONTEXT:` lines are left out of the server log altogether (the error is reported after
//! the call is gone, and some errors come before any masking, such as a misspelt argument
//! name). The statement is identified by its start timestamp, which Postgres sets once per
//! client message and keeps across the error recovery that emits the report. Only these
//! names count: the application's own queries on `credential_profiles` keep their text.

mod buffers;
mod hooks;
pub mod lines;
pub mod mask;
mod preload;
pub mod scan;
#[cfg(any(test, feature = "pg_test"))]
mod scan_check;

pub use hooks::install;

/// Records that the current statement's text may hold a key; called first by every function
/// that takes one. On the first call of a statement it also masks the statement's text, if
/// the library was loaded too late for the hooks to see it.
pub fn mark_statement() {
    buffers::mark_statement();
}

/// A key text (as passed, in the database encoding) one of our functions received: every
/// occurrence of it in the statement's text is masked, and in every later log line of the
/// statement. Called for each key before it is parsed.
pub fn saw_key(text: &[u8]) {
    buffers::saw_key(text);
}
