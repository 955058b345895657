//! The single-value SQL functions: seal, open, re-seal one value, generate and fingerprint keys.

use pgrx::prelude::*;
use pgrx::JsonB;
use zeroize::Zeroizing;

use pgrx::PgMemoryContexts;

use crate::envelope::{Cipher, EnvelopeError, PartsRotation, Rotation, Rotator, Sealed, Secret};
use crate::error::{Error, OrReport};
use crate::hygiene;
use crate::jsonb::RawJsonb;
use crate::key::{Key, KeyError};

/// Parses a key argument, naming the argument (never its value) when it is refused.
pub fn parse_key(arg: &'static str, text: Option<&str>) -> Result<Key, Error> {
    let text = text.ok_or(Error::InvalidKey {
        arg,
        reason: KeyError::Null,
    })?;
    Key::parse(text).map_err(|reason| Error::InvalidKey { arg, reason })
}

fn seal(plaintext: &[u8], key: Option<&str>) -> JsonB {
    hygiene::mark_statement();
    let key = parse_key("key", key).or_report();
    let envelope = Cipher::new(&key).seal(plaintext).or_report();
    JsonB(envelope.into_value())
}

/// Seals a secret object the way the application does: the compact JSON text of `plaintext`
/// (as `JSON.stringify` writes it) under `key`.
#[pg_extern(volatile, parallel_safe, name = "credential_encrypt")]
fn credential_encrypt_jsonb(plaintext: Option<RawJsonb>, key: Option<&str>) -> Option<JsonB> {
    hygiene::mark_statement();
    let text = Zeroizing::new(plaintext?.to_text());
    // jsonb_out writes `{"a": 1}`; the application seals JSON.stringify's `{"a":1}`.
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| Error::Envelope(EnvelopeError::NotJson))
        .or_report();
    let compact = Zeroizing::new(value.to_string());
    Some(seal(compact.as_bytes(), key))
}

/// Seals the exact bytes of `plaintext` under `key`.
#[pg_extern(volatile, parallel_safe, name = "credential_encrypt")]
fn credential_encrypt_text(plaintext: Option<&str>, key: Option<&str>) -> Option<JsonB> {
    Some(seal(plaintext?.as_bytes(), key))
}

fn open(sealed: Option<Sealed>, key: Option<&str>) -> Option<String> {
    hygiene::mark_statement();
    let key = parse_key("key", key).or_report();
    let plaintext = Cipher::new(&key).open_sealed(&sealed?).or_report();
    // open_sealed() has checked UTF-8 already.
    let text = std::str::from_utf8(&plaintext)
        .map_err(|_| Error::Envelope(EnvelopeError::PlaintextNotUtf8))
        .or_report();
    Some(text.to_owned())
}

/// Opens an envelope to the exact plaintext text the application sealed. `{}` (no secret
/// stored) gives NULL.
///
/// VOLATILE although its result depends only on its arguments: an IMMUTABLE (or STABLE)
/// function returning plaintext could be put in an expression index, a generated column or
/// extended statistics, or be folded into a plan at planning time, storing plaintext and the
/// key's use in the catalog or on disk. VOLATILE rules all of that out.
#[pg_extern(volatile, parallel_safe, name = "credential_decrypt")]
fn credential_decrypt_jsonb(envelope: Option<RawJsonb>, key: Option<&str>) -> Option<String> {
    // First: an envelope refused below must not leave the key-bearing statement unmarked.
    hygiene::mark_statement();
    // SAFETY: the argument is declared jsonb.
    let sealed = unsafe { envelope?.sealed() }.or_report();
    open(sealed, key)
}

#[pg_extern(volatile, parallel_safe, name = "credential_decrypt")]
fn credential_decrypt_text(envelope: Option<&str>, key: Option<&str>) -> Option<String> {
    hygiene::mark_statement();
    let sealed = match Secret::parse(envelope?).or_report() {
        Secret::Empty => None,
        Secret::Sealed(envelope) => Some(envelope.into_sealed()),
    };
    open(sealed, key)
}

/// Checks a pair of rotation keys (SQLSTATE 22023 naming the argument) and marks the statement
/// as one whose text holds keys. For callers written in SQL, before they do anything else.
/// VOLATILE: marking the statement is a side effect the planner must not fold away or skip.
#[pg_extern(volatile, parallel_safe)]
fn _credential_check_keys(old_key: Option<&str>, new_key: Option<&str>) -> bool {
    hygiene::mark_statement();
    let old = parse_key("old_key", old_key).or_report();
    let new = parse_key("new_key", new_key).or_report();
    if old == new {
        Error::SameKey.report();
    }
    true
}

/// A new key: standard base64 of 32 bytes from the operating system's CSPRNG.
#[pg_extern(volatile, parallel_safe, strict)]
fn credential_generate_key() -> String {
    let key = Key::generate().map_err(|_| Error::Random).or_report();
    key.to_base64().to_string()
}

/// A short, stable identifier of a key that reveals nothing about it.
#[pg_extern(immutable, parallel_safe)]
fn credential_key_fingerprint(key: Option<&str>) -> String {
    hygiene::mark_statement();
    parse_key("key", key).or_report().fingerprint()
}

/// The parsed keys of one call site, kept in `fn_extra` so that a statement like
/// `UPDATE t SET s = credential_reencrypt_value(s, $1, $2)` parses the keys and builds both
/// AES key schedules once, not once per row. Dropped (and wiped) with the call site's memory
/// context at the end of the statement.
struct CallSiteKeys {
    old_text: Zeroizing<String>,
    new_text: Zeroizing<String>,
    rotator: Rotator,
}

/// The rotator for these key texts, from the call site's cache when the texts are unchanged.
///
/// # Safety
/// `fcinfo` must be the FunctionCallInfo of the current call.
unsafe fn call_site_rotator<'a>(
    fcinfo: pg_sys::FunctionCallInfo,
    old_key: Option<&str>,
    new_key: Option<&str>,
) -> &'a Rotator {
    // SAFETY: the caller passes the current call's fcinfo; flinfo lives as long as the call
    // site, and fn_extra is ours to manage within fn_mcxt.
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        let cached = (*flinfo).fn_extra as *mut CallSiteKeys;
        if let (Some(cached), Some(old), Some(new)) = (cached.as_ref(), old_key, new_key) {
            if cached.old_text.as_str() == old && cached.new_text.as_str() == new {
                return &cached.rotator;
            }
        }
        let old = parse_key("old_key", old_key).or_report();
        let new = parse_key("new_key", new_key).or_report();
        if old == new {
            Error::SameKey.report();
        }
        let keys = CallSiteKeys {
            old_text: Zeroizing::new(old_key.unwrap_or_default().to_owned()),
            new_text: Zeroizing::new(new_key.unwrap_or_default().to_owned()),
            rotator: Rotator::new(&old, &new),
        };
        if let Some(cached) = cached.as_mut() {
            // Keys that change from row to row: replace in place, no growth per row.
            *cached = keys;
            &cached.rotator
        } else {
            let ptr = PgMemoryContexts::For((*flinfo).fn_mcxt).leak_and_drop_on_delete(keys);
            (*flinfo).fn_extra = ptr.cast();
            &(*ptr).rotator
        }
    }
}

fn call_site(
    fcinfo: pg_sys::FunctionCallInfo,
    old_key: Option<&str>,
    new_key: Option<&str>,
) -> &'static Rotator {
    hygiene::mark_statement();
    // SAFETY: fcinfo is the current call's; the cache outlives this call.
    unsafe { call_site_rotator(fcinfo, old_key, new_key) }
}

/// One envelope re-sealed from `old_key` to `new_key`; the same value when it already opens
/// with `new_key` or is `{}`; an ERROR otherwise. For a caller's own
/// `UPDATE ... SET col = credential_reencrypt_value(col, $1, $2) WHERE ...`; the keys are
/// parsed once per call site.
#[pg_extern(volatile, parallel_safe, name = "credential_reencrypt_value")]
fn credential_reencrypt_value_jsonb(
    envelope: Option<RawJsonb>,
    old_key: Option<&str>,
    new_key: Option<&str>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<RawJsonb> {
    let envelope = envelope?;
    let rotator = call_site(fcinfo, old_key, new_key);
    // SAFETY: the argument is declared jsonb.
    let Some(sealed) = (unsafe { envelope.sealed() }).or_report() else {
        return Some(envelope);
    };
    match rotator.rotate_sealed(sealed, true).or_report() {
        // SAFETY: the three fields were just decoded from this value.
        PartsRotation::Resealed(Some(parts)) => Some(unsafe { envelope.with_parts(&parts) }),
        PartsRotation::Resealed(None) | PartsRotation::AlreadyCurrent => Some(envelope),
    }
}

#[pg_extern(volatile, parallel_safe, name = "credential_reencrypt_value")]
fn credential_reencrypt_value_text(
    envelope: Option<&str>,
    old_key: Option<&str>,
    new_key: Option<&str>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<String> {
    let envelope = envelope?;
    let rotator = call_site(fcinfo, old_key, new_key);
    match rotator.rotate(envelope, true).or_report() {
        Rotation::Resealed(resealed) => Some(resealed.into_json()),
        Rotation::AlreadyCurrent | Rotation::Empty => Some(envelope.to_owned()),
    }
}
