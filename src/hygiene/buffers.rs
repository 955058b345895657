//! The buffers that hold a statement's text, masked in place, and what the masking leaves
//! for later log lines of the same statement.
//!
//! Which buffers hold a statement's text (PostgreSQL 15–18, `tcop/postgres.c`):
//! - simple protocol: one buffer is `debug_query_string`, `p_sourcetext` of every statement in
//!   it, the portal's and every `QueryDesc`'s `sourceText`; masked at parse analysis;
//! - extended protocol: Parse analyses the message buffer but keeps an unmasked copy in the
//!   cached plan, Bind copies that into the portal, Execute copies the portal's text into
//!   `debug_query_string`; each copy is masked when the executor or `ProcessUtility` starts on
//!   it, or when a log line quotes it, whichever comes first;
//! - `pg_stat_activity.query` (and through it the postmaster's crash line and other backends'
//!   deadlock reports) reads a copy in shared memory, rewritten with the same bytes.
//!
//! Nothing here raises or allocates from Postgres: it also runs inside `emit_log_hook`.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr};
use std::ops::Range;
use std::sync::atomic::{fence, Ordering};

use pgrx::pg_sys;
use zeroize::Zeroizing;

use super::mask::{self, Plan};
/// At most this many key texts are remembered per statement (a statement decrypting each row
/// with a different key from a column would otherwise grow the list without bound).
const MAX_SECRETS: usize = 64;

/// The statement text last covered: `debug_query_string` and the statement it belonged to.
struct Covered {
    text: usize,
    statement: pg_sys::TimestampTz,
    /// Its masking, when it names a key-taking function.
    plan: Option<Plan>,
}

/// Texts that must not appear in any log line of the statement that saw them: key arguments
/// the extension received, literals masked in its text.
struct Secrets {
    statement: pg_sys::TimestampTz,
    values: Vec<Zeroizing<Vec<u8>>>,
}

thread_local! {
    /// Start timestamp of the last client statement that passed a key to the extension.
    static MARKED_STATEMENT: Cell<Option<pg_sys::TimestampTz>> = const { Cell::new(None) };
    static COVERED: RefCell<Option<Covered>> = const { RefCell::new(None) };
    static SECRETS: RefCell<Secrets> = const {
        RefCell::new(Secrets { statement: 0, values: Vec::new() })
    };
    /// Whether the library was loaded before this session's first statement.
    static PRELOADED: Cell<bool> = const { Cell::new(false) };
    static WARNED: Cell<bool> = const { Cell::new(false) };
}

unsafe extern "C" {
    // Returns a backend-local variable and cannot raise: called without pgrx's FFI guard (a
    // sigsetjmp per call), as it runs several times for every statement.
    #[link_name = "GetCurrentStatementStartTimestamp"]
    fn current_statement_start() -> pg_sys::TimestampTz;
}

pub fn statement_start() -> pg_sys::TimestampTz {
    // SAFETY: see the declaration.
    unsafe { current_statement_start() }
}

pub fn standard_strings() -> bool {
    // SAFETY: a backend-local GUC variable.
    unsafe { pg_sys::standard_conforming_strings }
}

/// The bytes of a NUL-terminated string Postgres owns, writable in place.
///
/// # Safety
/// `text` is NULL or a live NUL-terminated string in writable memory that nothing else
/// borrows in Rust.
pub unsafe fn bytes_mut<'a>(text: *const c_char) -> Option<&'a mut [u8]> {
    if text.is_null() {
        return None;
    }
    // SAFETY: as the caller promises.
    unsafe {
        let len = CStr::from_ptr(text).to_bytes().len();
        Some(std::slice::from_raw_parts_mut(text as *mut u8, len))
    }
}

pub fn debug_query_string() -> *const c_char {
    // SAFETY: a backend-local pointer, NULL or the current client statement's text.
    unsafe { pg_sys::debug_query_string }
}

/// Masks `ranges` of `text` in place. When `text` is the client statement's text, the copy
/// `pg_stat_activity` shows is masked the same way, if it is still that statement's.
fn mask_in_place(text: &mut [u8], ranges: &[Range<usize>], is_activity: bool) {
    if ranges.is_empty() {
        return;
    }
    let activity = if is_activity {
        activity_copy_of(text)
    } else {
        None
    };
    for range in ranges {
        if let Some(bytes) = text.get_mut(range.clone()) {
            bytes.fill(b'*');
        }
    }
    if let Some((entry, shared)) = activity {
        // SAFETY: our own entry; see rewrite_activity.
        unsafe { rewrite_activity(entry, shared, ranges) };
    }
}

/// This backend's status entry and its activity text, when that text is (a prefix of) `text`.
fn activity_copy_of(text: &[u8]) -> Option<(*mut pg_sys::PgBackendStatus, &'static mut [u8])> {
    // SAFETY: MyBEEntry is NULL or this backend's own entry, which only this backend writes;
    // st_activity_raw is NUL-terminated within track_activity_query_size bytes.
    unsafe {
        let entry = pg_sys::MyBEEntry;
        if entry.is_null() {
            return None;
        }
        let shared = bytes_mut((*entry).st_activity_raw)?;
        (!shared.is_empty() && text.starts_with(shared)).then_some((entry, shared))
    }
}

/// Overwrites `ranges` of this backend's activity text, under the protocol of
/// `PGSTAT_BEGIN_WRITE_ACTIVITY` / `PGSTAT_END_WRITE_ACTIVITY` (a critical section, the change
/// count odd while writing), so that a concurrent reader retries instead of seeing half.
///
/// # Safety
/// `entry` is `MyBEEntry` and `shared` its `st_activity_raw` bytes.
unsafe fn rewrite_activity(
    entry: *mut pg_sys::PgBackendStatus,
    shared: &mut [u8],
    ranges: &[Range<usize>],
) {
    // SAFETY: as the caller promises; single-threaded backend.
    unsafe {
        let crit = &raw mut pg_sys::CritSectionCount;
        crit.write_volatile(crit.read_volatile() + 1);
        let count = &raw mut (*entry).st_changecount;
        count.write_volatile(count.read_volatile().wrapping_add(1));
        fence(Ordering::SeqCst);
        for range in ranges {
            let end = range.end.min(shared.len());
            if range.start < end {
                shared[range.start..end].fill(b'*');
            }
        }
        fence(Ordering::SeqCst);
        count.write_volatile(count.read_volatile().wrapping_add(1));
        crit.write_volatile(crit.read_volatile() - 1);
    }
}

fn remember_secrets(text: &[u8], ranges: &[Range<usize>]) {
    let statement = statement_start();
    for range in ranges {
        if let Some(core) = text.get(range.clone()).and_then(mask::key_core) {
            remember(statement, core);
        }
    }
}

/// Adds `secret` to the statement's secrets; false if it was there already (or the list is
/// full).
fn remember(statement: pg_sys::TimestampTz, secret: &[u8]) -> bool {
    SECRETS.with(|s| {
        let Ok(mut s) = s.try_borrow_mut() else {
            return false;
        };
        if s.statement != statement {
            // Dropping the old values wipes them.
            s.values.clear();
            s.statement = statement;
        }
        if s.values.len() >= MAX_SECRETS || s.values.iter().any(|v| v.as_slice() == secret) {
            return false;
        }
        s.values.push(Zeroizing::new(secret.to_vec()));
        true
    })
}

/// A statement text masked just now, and how: a log line formatted before can be masked the
/// same way wherever it quotes the original.
pub struct Fresh {
    pub original: Zeroizing<Vec<u8>>,
    pub plan: Plan,
}

/// Masks the client statement's text (`debug_query_string`) unless done already for this
/// statement.
pub fn cover_client_statement() -> Option<Fresh> {
    let text_ptr = debug_query_string();
    if text_ptr.is_null() {
        return None;
    }
    let statement = statement_start();
    let seen = COVERED.with(|c| {
        c.try_borrow()
            .map(|c| {
                c.as_ref()
                    .is_some_and(|c| c.text == text_ptr as usize && c.statement == statement)
            })
            .unwrap_or(true)
    });
    if seen {
        return None;
    }
    // SAFETY: debug_query_string is the live text of the current statement.
    let text = unsafe { bytes_mut(text_ptr) }?;
    let plan = mask::plan(text, standard_strings());
    COVERED.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            *c = Some(Covered {
                text: text_ptr as usize,
                statement,
                plan: plan.clone(),
            });
        }
    });
    let mut plan = plan?;
    plan.ranges.retain(|r| still_unmasked(text, r));
    if plan.ranges.is_empty() || creating_extension() {
        return None;
    }
    let original = Zeroizing::new(text.to_vec());
    remember_secrets(text, &plan.ranges);
    mask_in_place(text, &plan.ranges, true);
    Some(Fresh { original, plan })
}

/// Masks a statement text that may not be the client statement's: a nested statement's, or
/// another copy of the client statement's.
pub fn cover_text(text_ptr: *const c_char) {
    if text_ptr.is_null() || text_ptr == debug_query_string() {
        cover_client_statement();
        return;
    }
    // SAFETY: the caller passes a live statement text Postgres handed to a hook.
    let Some(text) = (unsafe { bytes_mut(text_ptr) }) else {
        return;
    };
    if let Some(mut plan) = mask::plan(text, standard_strings()) {
        plan.ranges.retain(|r| still_unmasked(text, r));
        if !plan.ranges.is_empty() && !creating_extension() {
            remember_secrets(text, &plan.ranges);
            mask_in_place(text, &plan.ranges, false);
        }
    }
}

/// Whether `range` of `text` is not all `*` yet: a text masked before (a parallel worker's
/// copy, a cached statement executed again) is not written again.
fn still_unmasked(text: &[u8], range: &Range<usize>) -> bool {
    text.get(range.clone())
        .is_some_and(|bytes| bytes.iter().any(|&b| b != b'*'))
}

/// An extension script passes no DBA's keys, and its text is parsed again as it runs on
/// some versions: never rewrite it.
pub fn creating_extension() -> bool {
    // SAFETY: a backend-local flag.
    unsafe { pg_sys::creating_extension }
}

pub fn active_portal_text() -> *const c_char {
    // SAFETY: ActivePortal is NULL or the live portal being run.
    unsafe {
        let portal = pg_sys::ActivePortal;
        if portal.is_null() {
            std::ptr::null()
        } else {
            (*portal).sourceText
        }
    }
}

/// See [`super::mark_statement`].
pub fn mark_statement() {
    let now = statement_start();
    if MARKED_STATEMENT.with(|m| m.replace(Some(now))) == Some(now) {
        return;
    }
    warn_if_not_preloaded();
    // Without a preload this statement's text was never seen by the hooks: mask it now.
    cover_client_statement();
    cover_text(active_portal_text());
}

pub fn statement_is_marked() -> bool {
    let marked = MARKED_STATEMENT.with(Cell::get);
    marked.is_some_and(|ts| ts == statement_start())
}

/// See [`super::saw_key`].
pub fn saw_key(text: &[u8]) {
    let Some(core) = mask::key_core(text) else {
        return;
    };
    if !remember(statement_start(), core) {
        return;
    }
    let client = debug_query_string();
    for (text_ptr, is_client) in [(client, true), (active_portal_text(), false)] {
        if is_client || text_ptr != client {
            // SAFETY: live statement texts of the current statement.
            if let Some(bytes) = unsafe { bytes_mut(text_ptr) } {
                let ranges = occurrences(bytes, core);
                mask_in_place(bytes, &ranges, is_client);
            }
        }
    }
}

fn occurrences(text: &[u8], needle: &[u8]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut i = 0;
    while i + needle.len() <= text.len() {
        if text[i..].starts_with(needle) {
            ranges.push(i..i + needle.len());
            i += needle.len();
        } else {
            i += 1;
        }
    }
    ranges
}

/// Records, from `_PG_init`, whether the library is loaded before the session's first
/// statement (a preload) or by one (a first call).
pub fn mark_preloaded(preloaded: bool) {
    PRELOADED.with(|p| p.set(preloaded));
}

fn warn_if_not_preloaded() {
    if PRELOADED.with(Cell::get) || WARNED.with(|w| w.replace(true)) {
        return;
    }
    super::preload::warn_on_first_call();
}

/// The masking of the client statement, when it names a key-taking function.
pub fn client_statement_plan() -> Option<Plan> {
    COVERED.with(|c| {
        let c = c.try_borrow().ok()?;
        let c = c.as_ref()?;
        (c.text == debug_query_string() as usize && c.statement == statement_start())
            .then(|| c.plan.clone())?
    })
}

/// Runs `f` over the current statement's secrets, if any.
pub fn with_statement_secrets(f: impl FnOnce(&[Zeroizing<Vec<u8>>])) {
    let statement = statement_start();
    SECRETS.with(|s| {
        if let Ok(s) = s.try_borrow() {
            if s.statement == statement {
                f(&s.values);
            }
        }
    });
}
