//! The single-value SQL functions: seal, open, generate and fingerprint keys.

use pgrx::prelude::*;
use pgrx::JsonB;
use zeroize::Zeroizing;

use crate::envelope::{Cipher, EnvelopeError, Secret};
use crate::error::{Error, OrReport};
use crate::hygiene;
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
fn credential_encrypt_jsonb(plaintext: Option<JsonB>, key: Option<&str>) -> Option<JsonB> {
    let plaintext = plaintext?;
    let text = Zeroizing::new(plaintext.0.to_string());
    Some(seal(text.as_bytes(), key))
}

/// Seals the exact bytes of `plaintext` under `key`.
#[pg_extern(volatile, parallel_safe, name = "credential_encrypt")]
fn credential_encrypt_text(plaintext: Option<&str>, key: Option<&str>) -> Option<JsonB> {
    Some(seal(plaintext?.as_bytes(), key))
}

fn open(envelope: &str, key: Option<&str>) -> Option<String> {
    hygiene::mark_statement();
    let key = parse_key("key", key).or_report();
    match Secret::parse(envelope).or_report() {
        Secret::Empty => None,
        Secret::Sealed(envelope) => {
            let plaintext = Cipher::new(&key).open(&envelope).or_report();
            // open() has checked UTF-8 already.
            let text = std::str::from_utf8(&plaintext)
                .map_err(|_| Error::Envelope(EnvelopeError::PlaintextNotUtf8))
                .or_report();
            Some(text.to_owned())
        }
    }
}

/// Opens an envelope to the exact plaintext text the application sealed. `{}` (no secret
/// stored) gives NULL.
#[pg_extern(immutable, parallel_safe, name = "credential_decrypt")]
fn credential_decrypt_jsonb(envelope: Option<JsonB>, key: Option<&str>) -> Option<String> {
    let text = envelope?.0.to_string();
    open(&text, key)
}

#[pg_extern(immutable, parallel_safe, name = "credential_decrypt")]
fn credential_decrypt_text(envelope: Option<&str>, key: Option<&str>) -> Option<String> {
    open(envelope?, key)
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
