//! The single-value SQL functions: seal, open, re-seal one value, generate and fingerprint keys.

use pgrx::prelude::*;
use pgrx::JsonB;
use zeroize::Zeroizing;

use pgrx::datum::Array;
use pgrx::PgMemoryContexts;

use crate::args;
use crate::encoding::DbText;
use crate::envelope::{Cipher, EnvelopeError, Rotation, Rotator, Sealed, Secret};
use crate::error::{Error, OrReport};
use crate::hygiene;
use crate::jsonb::RawJsonb;
use crate::key::Key;

fn seal(plaintext: &[u8], key: Option<&DbText>) -> JsonB {
    hygiene::mark_statement();
    let key = args::key("key", key).or_report();
    let envelope = Cipher::new(&key).seal(plaintext).or_report();
    JsonB(envelope.into_value())
}

/// Seals a secret object the way the application does: the compact JSON text of `plaintext`
/// (as `JSON.stringify` writes it) under `key`.
#[pg_extern(volatile, parallel_safe, name = "credential_encrypt")]
fn credential_encrypt_jsonb(plaintext: Option<RawJsonb>, key: Option<DbText>) -> Option<JsonB> {
    hygiene::mark_statement();
    // In a non-UTF-8 database jsonb_out writes the database encoding: the application seals
    // UTF-8, so the text is converted, exactly or not at all.
    let text = Zeroizing::new(plaintext?.to_text("the plaintext").or_report());
    // jsonb_out writes `{"a": 1}`; the application seals JSON.stringify's `{"a":1}`.
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| Error::Envelope(EnvelopeError::NotJson))
        .or_report();
    let compact = Zeroizing::new(value.to_string());
    Some(seal(compact.as_bytes(), key.as_ref()))
}

/// Seals the exact characters of `plaintext` under `key`, as the UTF-8 the application
/// seals whatever the database encoding.
#[pg_extern(volatile, parallel_safe, name = "credential_encrypt")]
fn credential_encrypt_text(plaintext: Option<DbText>, key: Option<DbText>) -> Option<JsonB> {
    hygiene::mark_statement();
    let plaintext = plaintext?;
    let utf8 = plaintext.to_utf8("the plaintext").or_report();
    Some(seal(utf8.as_bytes(), key.as_ref()))
}

fn open(sealed: Option<Sealed>, key: Option<&DbText>) -> Option<DbText> {
    hygiene::mark_statement();
    let key = args::key("key", key).or_report();
    let plaintext = Cipher::new(&key).open_sealed(&sealed?).or_report();
    // open_sealed() has checked UTF-8 already.
    let text = std::str::from_utf8(&plaintext)
        .map_err(|_| Error::Envelope(EnvelopeError::PlaintextNotUtf8))
        .or_report();
    // The plaintext is UTF-8; the result is text in the database encoding. A character the
    // database cannot hold is refused (22P05): a lossy or mislabelled plaintext would be
    // written back by the application as a different secret.
    Some(DbText::from_utf8(text, "the plaintext").or_report())
}

/// Opens an envelope to the exact plaintext text the application sealed. `{}` (no secret
/// stored) gives NULL.
///
/// VOLATILE although its result depends only on its arguments: an IMMUTABLE (or STABLE)
/// function returning plaintext could be put in an expression index, a generated column or
/// extended statistics, or be folded into a plan at planning time, storing plaintext and the
/// key's use in the catalog or on disk. VOLATILE rules all of that out.
#[pg_extern(volatile, parallel_safe, name = "credential_decrypt")]
fn credential_decrypt_jsonb(envelope: Option<RawJsonb>, key: Option<DbText>) -> Option<DbText> {
    // First: an envelope refused below must not leave the key-bearing statement unmarked.
    hygiene::mark_statement();
    // SAFETY: the argument is declared jsonb.
    let sealed = unsafe { envelope?.sealed() }.or_report();
    open(sealed, key.as_ref())
}

#[pg_extern(volatile, parallel_safe, name = "credential_decrypt")]
fn credential_decrypt_text(envelope: Option<DbText>, key: Option<DbText>) -> Option<DbText> {
    hygiene::mark_statement();
    let envelope = envelope?;
    let envelope = envelope.to_utf8("the envelope").or_report();
    open(Secret::parse_sealed(&envelope).or_report(), key.as_ref())
}

/// Checks a pair of rotation keys (SQLSTATE 22023 naming the argument) and marks the statement
/// as one whose text holds keys. For the one-key batched procedure, before anything else, so
/// that its errors name `old_key` and `new_key`. VOLATILE: it is called for these effects,
/// which must happen when the procedure runs it (an IMMUTABLE function with constant arguments
/// may be run once, at planning, or not at all).
#[pg_extern(volatile, parallel_safe, schema = "credential_rotate")]
fn _credential_check_keys(old_key: Option<DbText>, new_key: Option<DbText>) -> bool {
    hygiene::mark_statement();
    args::one_old(old_key.as_ref(), new_key.as_ref()).or_report();
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
fn credential_key_fingerprint(key: Option<DbText>) -> String {
    hygiene::mark_statement();
    args::key("key", key.as_ref()).or_report().fingerprint()
}

/// The parsed keys of one call site, kept in `fn_extra` so that a statement like
/// `UPDATE t SET s = credential_reencrypt_value(s, $1, $2)` parses the keys and builds both
/// AES key schedules once, not once per row. Dropped (and wiped) with the call site's memory
/// context at the end of the statement.
struct CallSiteKeys {
    /// The old key texts as given, in the database encoding: one `old_key`, or the elements
    /// of `old_keys`.
    old_texts: Vec<Zeroizing<Vec<u8>>>,
    new_text: Zeroizing<Vec<u8>>,
    rotator: Rotator,
}

/// The rotator for these key texts, from the call site's cache when the texts are unchanged,
/// else from `build`.
///
/// # Safety
/// `fcinfo` must be the FunctionCallInfo of the current call.
unsafe fn call_site_rotator<'a>(
    fcinfo: pg_sys::FunctionCallInfo,
    old_texts: &[Option<DbText>],
    new_key: Option<&DbText>,
    build: impl FnOnce() -> Result<Rotator, Error>,
) -> &'a Rotator {
    // SAFETY: the caller passes the current call's fcinfo; flinfo lives as long as the call
    // site, and fn_extra is ours to manage within fn_mcxt.
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        let cached = (*flinfo).fn_extra as *mut CallSiteKeys;
        if let (Some(cached), Some(new)) = (cached.as_ref(), new_key) {
            // Only keys that were accepted are cached: a NULL or empty list never matches.
            let same_old = old_texts.len() == cached.old_texts.len()
                && old_texts
                    .iter()
                    .zip(&cached.old_texts)
                    .all(|(t, c)| t.as_ref().is_some_and(|t| t.bytes() == c.as_slice()));
            if same_old && cached.new_text.as_slice() == new.bytes() {
                return &cached.rotator;
            }
        }
        let rotator = build().or_report();
        let bytes =
            |t: Option<&DbText>| Zeroizing::new(t.map(|t| t.bytes().to_vec()).unwrap_or_default());
        let keys = CallSiteKeys {
            old_texts: old_texts.iter().map(|t| bytes(t.as_ref())).collect(),
            new_text: bytes(new_key),
            rotator,
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
    old_key: Option<DbText>,
    new_key: Option<&DbText>,
) -> &'static Rotator {
    hygiene::mark_statement();
    let old_texts = [old_key];
    let build = || {
        let (old, new) = args::one_old(old_texts[0].as_ref(), new_key)?;
        Ok(Rotator::new(&old, &new))
    };
    // SAFETY: fcinfo is the current call's; the cache outlives this call.
    unsafe { call_site_rotator(fcinfo, &old_texts, new_key, build) }
}

/// As [`call_site`] for several old keys.
fn call_site_keys<'a>(
    fcinfo: pg_sys::FunctionCallInfo,
    old_keys: Option<&Array<'a, DbText>>,
    new_key: Option<&DbText>,
) -> &'static Rotator {
    hygiene::mark_statement();
    let build = || {
        let (old, new) = args::several_old(old_keys.map(|a| a.iter()), new_key)?;
        Ok(Rotator::with_old_keys(&old, &new))
    };
    let texts: Vec<Option<DbText>> = old_keys.into_iter().flat_map(|a| a.iter()).collect();
    // SAFETY: fcinfo is the current call's; the cache outlives this call.
    unsafe { call_site_rotator(fcinfo, &texts, new_key, build) }
}

fn reencrypt_value_jsonb(envelope: RawJsonb, rotator: &Rotator) -> RawJsonb {
    // SAFETY: the argument is declared jsonb.
    let Some(sealed) = (unsafe { envelope.sealed() }).or_report() else {
        return envelope;
    };
    match rotator.rotate_sealed(sealed).or_report() {
        // SAFETY: the three fields were just decoded from this value.
        Rotation::Resealed { value: parts, .. } => unsafe { envelope.with_parts(&parts) },
        Rotation::AlreadyCurrent | Rotation::Empty => envelope,
    }
}

/// The envelope's own fields are ASCII, other fields it carries need not be: read as UTF-8,
/// and a re-sealed envelope written back in the database encoding (exact: every character
/// came from it). An unchanged value is returned as stored.
fn reencrypt_value_text(envelope: DbText, rotator: &Rotator) -> DbText {
    let resealed = {
        let text = envelope.to_utf8("the envelope").or_report();
        match rotator.rotate(&text).or_report() {
            Rotation::Resealed { value, .. } => Some(value.into_json()),
            Rotation::AlreadyCurrent | Rotation::Empty => None,
        }
    };
    match resealed {
        Some(json) => DbText::from_utf8(&json, "the envelope").or_report(),
        None => envelope,
    }
}

/// As `credential_reencrypt_value(jsonb, text, text)`, from whichever of `old_keys` opens the
/// envelope.
#[pg_extern(volatile, parallel_safe, name = "credential_reencrypt_value")]
fn credential_reencrypt_value_jsonb_keys<'a>(
    envelope: Option<RawJsonb>,
    old_keys: Option<Array<'a, DbText>>,
    new_key: Option<DbText>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<RawJsonb> {
    let envelope = envelope?;
    let rotator = call_site_keys(fcinfo, old_keys.as_ref(), new_key.as_ref());
    Some(reencrypt_value_jsonb(envelope, rotator))
}

#[pg_extern(volatile, parallel_safe, name = "credential_reencrypt_value")]
fn credential_reencrypt_value_text_keys<'a>(
    envelope: Option<DbText>,
    old_keys: Option<Array<'a, DbText>>,
    new_key: Option<DbText>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<DbText> {
    let envelope = envelope?;
    let rotator = call_site_keys(fcinfo, old_keys.as_ref(), new_key.as_ref());
    Some(reencrypt_value_text(envelope, rotator))
}

/// One envelope re-sealed from `old_key` to `new_key`; the same value when it already opens
/// with `new_key` or is `{}`; an ERROR otherwise. For a caller's own
/// `UPDATE ... SET col = credential_reencrypt_value(col, $1, $2) WHERE ...`; the keys are
/// parsed once per call site.
#[pg_extern(volatile, parallel_safe, name = "credential_reencrypt_value")]
fn credential_reencrypt_value_jsonb(
    envelope: Option<RawJsonb>,
    old_key: Option<DbText>,
    new_key: Option<DbText>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<RawJsonb> {
    let envelope = envelope?;
    let rotator = call_site(fcinfo, old_key, new_key.as_ref());
    Some(reencrypt_value_jsonb(envelope, rotator))
}

#[pg_extern(volatile, parallel_safe, name = "credential_reencrypt_value")]
fn credential_reencrypt_value_text(
    envelope: Option<DbText>,
    old_key: Option<DbText>,
    new_key: Option<DbText>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<DbText> {
    let envelope = envelope?;
    let rotator = call_site(fcinfo, old_key, new_key.as_ref());
    Some(reencrypt_value_text(envelope, rotator))
}
