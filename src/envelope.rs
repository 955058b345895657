//! The application's envelope format and its cryptography.
//!
//! An envelope is the JSON object Freeboard writes with Node's `crypto`:
//! `{"algorithm":"aes-256-gcm","keyId":"v1","iv":…,"ciphertext":…,"authTag":…}` with
//! standard padded base64, a 12-byte IV, a 16-byte tag and no associated data. Plain Rust, no
//! pgrx: everything here can be unit-tested and fuzzed without a server.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{DecodeSliceError, Engine};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::key::Key;

pub const ALGORITHM: &str = "aes-256-gcm";
/// A format tag the application writes and never checks; kept as found when re-sealing.
pub const KEY_ID: &str = "v1";
pub const IV_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

const FIELD_ALGORITHM: &str = "algorithm";
const FIELD_KEY_ID: &str = "keyId";
const FIELD_IV: &str = "iv";
const FIELD_CIPHERTEXT: &str = "ciphertext";
const FIELD_TAG: &str = "authTag";

/// Node decodes base64 with or without padding; we read the same way and always write padded,
/// as Node does.
const READ_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a stored secret could not be used. Never carries secret material: no key, no plaintext,
/// no field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the secret is not valid JSON")]
    NotJson,
    #[error("the secret is not a JSON object")]
    NotAnObject,
    #[error("the envelope has no \"{0}\" field")]
    MissingField(&'static str),
    #[error("the envelope field \"{0}\" is not a string")]
    NotAString(&'static str),
    #[error("the envelope algorithm is not \"aes-256-gcm\"")]
    UnknownAlgorithm,
    #[error("the envelope field \"{0}\" is not valid base64")]
    InvalidBase64(&'static str),
    #[error("the envelope IV is {0} bytes, not 12")]
    WrongIvLength(usize),
    #[error("the envelope authTag is {0} bytes, not 16")]
    WrongTagLength(usize),
    #[error("the envelope does not open with the key (wrong key, or the envelope was altered)")]
    DoesNotOpen,
    #[error("the envelope does not open with old_key or new_key (wrong key, or the envelope was altered)")]
    OpensWithNeitherKey,
    #[error("the envelope does not open with any of old_keys or with new_key (wrong key, or the envelope was altered)")]
    OpensWithNoKey,
    #[error("the decrypted secret is not valid UTF-8")]
    PlaintextNotUtf8,
    #[error("the operating system's random number generator failed")]
    Random,
    #[error("the stored jsonb value is damaged: its binary layout does not check out")]
    DamagedJsonb,
    #[error("the secret is too large to seal")]
    TooLarge,
}

/// What a stored secret value holds.
#[derive(Debug)]
pub enum Secret {
    /// The column default `{}`: no secret stored.
    Empty,
    Sealed(Envelope),
}

/// A parsed, well-formed envelope. Every field of the original object is kept, in order, so
/// that re-sealing changes nothing but the IV, ciphertext and tag.
#[derive(Debug, Clone)]
pub struct Envelope {
    fields: Map<String, Value>,
    sealed: Sealed,
}

/// The binary parts of an envelope, decoded and length-checked.
#[derive(Clone)]
pub struct Sealed {
    iv: [u8; IV_LEN],
    /// Zeroized on drop: a rotation decrypts it in place, so for a moment it is plaintext.
    ciphertext: Zeroizing<Vec<u8>>,
    tag: [u8; TAG_LEN],
}

/// An envelope field as found in a stored object, before any decoding.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    Missing,
    NotAString,
    /// The string's bytes: base64 is ASCII, so no UTF-8 check is needed to decode it.
    Str(&'a [u8]),
}

/// The three fields a re-seal replaces, base64-encoded as Node writes them, in one buffer:
/// one allocation per row, and no UTF-8 check of what base64 writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedParts {
    buffer: Vec<u8>,
    iv_end: usize,
    ciphertext_end: usize,
}

impl EncodedParts {
    fn encode(iv: &[u8], ciphertext: &[u8], tag: &[u8]) -> Result<EncodedParts, EnvelopeError> {
        let len =
            |part: &[u8]| base64::encoded_len(part.len(), true).ok_or(EnvelopeError::TooLarge);
        let iv_end = len(iv)?;
        let ciphertext_end = iv_end
            .checked_add(len(ciphertext)?)
            .ok_or(EnvelopeError::TooLarge)?;
        let end = ciphertext_end
            .checked_add(len(tag)?)
            .ok_or(EnvelopeError::TooLarge)?;
        let mut buffer = vec![0; end];
        let mut at = 0;
        for part in [iv, ciphertext, tag] {
            at += STANDARD
                .encode_slice(part, buffer.get_mut(at..).ok_or(EnvelopeError::TooLarge)?)
                .map_err(|_| EnvelopeError::TooLarge)?;
        }
        Ok(EncodedParts {
            buffer,
            iv_end,
            ciphertext_end,
        })
    }

    /// Parts given as base64 text (tests).
    #[cfg(any(test, feature = "pg_test"))]
    pub fn from_text(iv: &str, ciphertext: &str, auth_tag: &str) -> EncodedParts {
        EncodedParts {
            buffer: [iv, ciphertext, auth_tag].concat().into_bytes(),
            iv_end: iv.len(),
            ciphertext_end: iv.len() + ciphertext.len(),
        }
    }

    pub fn iv(&self) -> &[u8] {
        self.buffer.get(..self.iv_end).unwrap_or_default()
    }

    pub fn ciphertext(&self) -> &[u8] {
        self.buffer
            .get(self.iv_end..self.ciphertext_end)
            .unwrap_or_default()
    }

    pub fn auth_tag(&self) -> &[u8] {
        self.buffer.get(self.ciphertext_end..).unwrap_or_default()
    }

    /// The three parts under their envelope field names.
    pub fn fields(&self) -> [(&'static [u8], &[u8]); 3] {
        [
            (FIELD_IV.as_bytes(), self.iv()),
            (FIELD_CIPHERTEXT.as_bytes(), self.ciphertext()),
            (FIELD_TAG.as_bytes(), self.auth_tag()),
        ]
    }
}

impl Secret {
    /// Parses a stored secret (the column's text form). Checks structure only; whether it
    /// opens is a question for a [`Cipher`].
    pub fn parse(text: &str) -> Result<Secret, EnvelopeError> {
        let value: Value = serde_json::from_str(text).map_err(|_| EnvelopeError::NotJson)?;
        Secret::from_value(value)
    }

    pub fn from_value(value: Value) -> Result<Secret, EnvelopeError> {
        let Value::Object(fields) = value else {
            return Err(EnvelopeError::NotAnObject);
        };
        if fields.is_empty() {
            return Ok(Secret::Empty);
        }
        Envelope::from_fields(fields).map(Secret::Sealed)
    }
}

fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Field<'a> {
    match fields.get(name) {
        None => Field::Missing,
        Some(Value::String(s)) => Field::Str(s.as_bytes()),
        Some(_) => Field::NotAString,
    }
}

fn require<'a>(field: Field<'a>, name: &'static str) -> Result<&'a [u8], EnvelopeError> {
    match field {
        Field::Missing => Err(EnvelopeError::MissingField(name)),
        Field::NotAString => Err(EnvelopeError::NotAString(name)),
        Field::Str(s) => Ok(s),
    }
}

fn decode_base64(field: Field<'_>, name: &'static str) -> Result<Vec<u8>, EnvelopeError> {
    READ_BASE64
        .decode(require(field, name)?)
        .map_err(|_| EnvelopeError::InvalidBase64(name))
}

/// Lengths only: during a rotation the buffer briefly holds plaintext.
impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Decodes a field that must hold exactly `N` bytes, on the stack: the IV and the tag are
/// decoded for every row of a rotation.
fn decode_fixed<const N: usize>(
    field: Field<'_>,
    name: &'static str,
    wrong_length: fn(usize) -> EnvelopeError,
) -> Result<[u8; N], EnvelopeError> {
    let text = require(field, name)?;
    let mut buffer = [0u8; 32];
    match READ_BASE64.decode_slice(text, &mut buffer) {
        Ok(len) => buffer
            .get(..len)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(wrong_length(len)),
        // Longer than any IV or tag: decoded again only to say how long it is.
        Err(DecodeSliceError::OutputSliceTooSmall) => Err(wrong_length(
            READ_BASE64
                .decode(text)
                .map_err(|_| EnvelopeError::InvalidBase64(name))?
                .len(),
        )),
        Err(DecodeSliceError::DecodeError(_)) => Err(EnvelopeError::InvalidBase64(name)),
    }
}

impl Sealed {
    /// Checks and decodes an envelope's fields, in the order the application's reader would
    /// trip over them. Shared by the JSON-text path and the jsonb fast path, so both give the
    /// same answer for the same value.
    pub fn decode(
        algorithm: Field<'_>,
        iv: Field<'_>,
        ciphertext: Field<'_>,
        tag: Field<'_>,
    ) -> Result<Sealed, EnvelopeError> {
        if require(algorithm, FIELD_ALGORITHM)? != ALGORITHM.as_bytes() {
            return Err(EnvelopeError::UnknownAlgorithm);
        }
        let iv = decode_fixed(iv, FIELD_IV, EnvelopeError::WrongIvLength)?;
        let ciphertext = Zeroizing::new(decode_base64(ciphertext, FIELD_CIPHERTEXT)?);
        let tag = decode_fixed(tag, FIELD_TAG, EnvelopeError::WrongTagLength)?;
        Ok(Sealed {
            iv,
            ciphertext,
            tag,
        })
    }
}

impl Envelope {
    fn from_fields(fields: Map<String, Value>) -> Result<Envelope, EnvelopeError> {
        let sealed = Sealed::decode(
            field(&fields, FIELD_ALGORITHM),
            field(&fields, FIELD_IV),
            field(&fields, FIELD_CIPHERTEXT),
            field(&fields, FIELD_TAG),
        )?;
        Ok(Envelope { fields, sealed })
    }

    /// The envelope as JSON text, fields in their original order (tests; the SQL layer uses
    /// the consuming `into_json`).
    #[cfg(test)]
    pub fn to_json(&self) -> String {
        // Serialising a map of strings and JSON values cannot fail.
        Value::Object(self.fields.clone()).to_string()
    }

    pub fn into_sealed(self) -> Sealed {
        self.sealed
    }

    /// The envelope as JSON text, consuming it (no copy of the fields).
    pub fn into_json(self) -> String {
        Value::Object(self.fields).to_string()
    }

    pub fn into_value(self) -> Value {
        Value::Object(self.fields)
    }
}

/// An AES-256-GCM cipher with its key schedule built once, to be reused for every row.
pub struct Cipher {
    aead: Aes256Gcm,
    ivs: std::cell::RefCell<IvPool>,
}

impl Cipher {
    pub fn new(key: &Key) -> Cipher {
        Cipher {
            aead: Aes256Gcm::new(key.as_bytes().into()),
            ivs: Default::default(),
        }
    }

    /// Opens an envelope to its exact plaintext bytes, which must be UTF-8 (the application
    /// stores `JSON.stringify` output).
    pub fn open(&self, envelope: &Envelope) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        self.open_sealed(&envelope.sealed)
    }

    pub fn open_sealed(&self, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let mut buffer = sealed.ciphertext.clone();
        self.open_in_place(&sealed.iv, &sealed.tag, &mut buffer)?;
        Ok(buffer)
    }

    /// Decrypts `buffer` in place. On `DoesNotOpen` the buffer is left as it was (the tag is
    /// checked before anything is decrypted), so another key can be tried on it.
    fn open_in_place(
        &self,
        iv: &[u8; IV_LEN],
        tag: &[u8; TAG_LEN],
        buffer: &mut [u8],
    ) -> Result<(), EnvelopeError> {
        self.aead
            .decrypt_in_place_detached(Nonce::from_slice(iv), b"", buffer, Tag::from_slice(tag))
            .map_err(|_| EnvelopeError::DoesNotOpen)?;
        if std::str::from_utf8(buffer).is_err() {
            return Err(EnvelopeError::PlaintextNotUtf8);
        }
        Ok(())
    }

    /// Seals plaintext into a new envelope exactly as the application writes one.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Envelope, EnvelopeError> {
        let mut fields = Map::new();
        fields.insert(FIELD_ALGORITHM.into(), Value::String(ALGORITHM.into()));
        fields.insert(FIELD_KEY_ID.into(), Value::String(KEY_ID.into()));
        // Placeholders keep Node's field order; seal_into overwrites them in place.
        fields.insert(FIELD_IV.into(), Value::Null);
        fields.insert(FIELD_CIPHERTEXT.into(), Value::Null);
        fields.insert(FIELD_TAG.into(), Value::Null);
        self.seal_into(fields, plaintext)
    }

    /// Re-seals plaintext into an existing envelope's fields with a fresh random IV, keeping
    /// `keyId`, field order and any field the application may have added.
    pub fn reseal(&self, envelope: Envelope, plaintext: &[u8]) -> Result<Envelope, EnvelopeError> {
        self.seal_into(envelope.fields, plaintext)
    }

    fn seal_into(
        &self,
        mut fields: Map<String, Value>,
        plaintext: &[u8],
    ) -> Result<Envelope, EnvelopeError> {
        let (sealed, encoded) = self.seal_parts(plaintext)?;
        // Base64 is ASCII: the lossy conversion never changes a byte.
        let text = |part: &[u8]| Value::String(String::from_utf8_lossy(part).into_owned());
        fields.insert(FIELD_IV.into(), text(encoded.iv()));
        fields.insert(FIELD_CIPHERTEXT.into(), text(encoded.ciphertext()));
        fields.insert(FIELD_TAG.into(), text(encoded.auth_tag()));
        Ok(Envelope { fields, sealed })
    }

    /// Seals plaintext with a fresh random IV; returns the parts and their base64 text.
    pub fn seal_parts(&self, plaintext: &[u8]) -> Result<(Sealed, EncodedParts), EnvelopeError> {
        let mut sealed = Sealed {
            iv: [0; IV_LEN],
            ciphertext: Zeroizing::new(plaintext.to_vec()),
            tag: [0; TAG_LEN],
        };
        let encoded = self.seal_in_place(&mut sealed)?;
        Ok((sealed, encoded))
    }

    /// Encrypts the plaintext held in `sealed.ciphertext` in place under a fresh IV, filling
    /// in the IV and tag; returns the three parts in base64.
    fn seal_in_place(&self, sealed: &mut Sealed) -> Result<EncodedParts, EnvelopeError> {
        sealed.iv = self.ivs.borrow_mut().take()?;
        let tag = self
            .aead
            .encrypt_in_place_detached(Nonce::from_slice(&sealed.iv), b"", &mut sealed.ciphertext)
            // Only fails for plaintexts beyond GCM's 64 GiB limit, far past any Postgres value.
            .map_err(|_| EnvelopeError::TooLarge)?;
        sealed.tag = tag.into();
        EncodedParts::encode(&sealed.iv, &sealed.ciphertext, &sealed.tag)
    }
}

/// IVs drawn from the OS CSPRNG in blocks rather than one `getrandom` call per row: the
/// block doubles from 1 up to 256 IVs, so a single seal draws 12 bytes and a rotation one call
/// per 256 rows. IVs are public, so buffering them exposes nothing; each IV is handed out once.
/// The pool belongs to one `Cipher`, which lives within one call of one process: no IV can be
/// shared with a forked child.
#[derive(Default)]
struct IvPool {
    buffer: Vec<u8>,
    next: usize,
}

const IV_POOL_MAX: usize = 256;

impl IvPool {
    fn take(&mut self) -> Result<[u8; IV_LEN], EnvelopeError> {
        if self.next * IV_LEN >= self.buffer.len() {
            let ivs = (self.buffer.len() / IV_LEN * 2).clamp(1, IV_POOL_MAX);
            self.buffer.resize(ivs * IV_LEN, 0);
            getrandom::getrandom(&mut self.buffer).map_err(|_| EnvelopeError::Random)?;
            self.next = 0;
        }
        let range = self.next * IV_LEN..(self.next + 1) * IV_LEN;
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&self.buffer[range.clone()]);
        self.buffer[range].fill(0);
        self.next += 1;
        Ok(iv)
    }
}

/// What rotating one stored secret amounts to.
#[derive(Debug)]
pub enum Rotation {
    /// `{}`: nothing stored, left untouched.
    Empty,
    /// Already opens with the new key: left untouched.
    AlreadyCurrent,
    /// Opened with old key `by` (its position among the old keys, from 0) and re-sealed under
    /// the new one.
    Resealed { envelope: Envelope, by: usize },
}

/// What checking one stored secret against a key finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Empty,
    Readable,
    NotReadable,
    Malformed(EnvelopeError),
}

/// Several keys tried in turn on one envelope: the old keys of a rotation, the keys of a
/// census. The key that opened the previous envelope is tried first: rows sealed in the same
/// period sit together in the heap, so with several keys most rows still open at the first
/// try, and a failed try costs only the tag check.
pub struct KeyRing {
    ciphers: Vec<Cipher>,
    last: std::cell::Cell<usize>,
}

impl KeyRing {
    pub fn new(keys: &[Key]) -> KeyRing {
        KeyRing {
            ciphers: keys.iter().map(Cipher::new).collect(),
            last: std::cell::Cell::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.ciphers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ciphers.is_empty()
    }

    /// Decrypts `buffer` in place with the key that opens it and returns that key's position.
    /// On `DoesNotOpen` (no key opens it) the buffer is as it was.
    fn open_in_place(
        &self,
        iv: &[u8; IV_LEN],
        tag: &[u8; TAG_LEN],
        buffer: &mut [u8],
    ) -> Result<usize, EnvelopeError> {
        let first = self.last.get();
        let rest = (0..self.ciphers.len()).filter(|&i| i != first);
        for i in std::iter::once(first).chain(rest) {
            let Some(cipher) = self.ciphers.get(i) else {
                continue;
            };
            match cipher.open_in_place(iv, tag, buffer) {
                Err(EnvelopeError::DoesNotOpen) => continue,
                // Opened by key i, even when the plaintext is then refused.
                opened => {
                    self.last.set(i);
                    return opened.map(|()| i);
                }
            }
        }
        Err(EnvelopeError::DoesNotOpen)
    }

    /// The position of the key that opens an envelope given as its parts, consumed (decrypted
    /// in place, then wiped). Distinct keys cannot both open one envelope (a GCM tag that
    /// checks out under two keys is a 2^-128 accident), so the order keys are tried in does
    /// not change the answer.
    pub fn identify(&self, mut sealed: Sealed) -> Result<usize, EnvelopeError> {
        let (iv, tag) = (sealed.iv, sealed.tag);
        self.open_in_place(&iv, &tag, &mut sealed.ciphertext)
    }

    /// As [`KeyRing::identify`] for a stored secret's text: `None` for `{}`.
    pub fn identify_text(&self, text: &str) -> Result<Option<usize>, EnvelopeError> {
        match Secret::parse(text)? {
            Secret::Empty => Ok(None),
            Secret::Sealed(envelope) => self.identify(envelope.into_sealed()).map(Some),
        }
    }
}

/// The ciphers of a rotation, built once per call: one or more old keys and the new key.
pub struct Rotator {
    old: KeyRing,
    new: Cipher,
    /// What an envelope that opens with no key is: the one-key form names `old_key`.
    neither: EnvelopeError,
}

impl Rotator {
    /// The one-old-key rotation (`old_key`, `new_key`).
    pub fn new(old: &Key, new: &Key) -> Rotator {
        Rotator {
            old: KeyRing::new(std::slice::from_ref(old)),
            new: Cipher::new(new),
            neither: EnvelopeError::OpensWithNeitherKey,
        }
    }

    /// A rotation from any of `old` (`old_keys`) to `new`; the caller has checked that the
    /// keys are distinct.
    pub fn with_old_keys(old: &[Key], new: &Key) -> Rotator {
        Rotator {
            old: KeyRing::new(old),
            new: Cipher::new(new),
            neither: EnvelopeError::OpensWithNoKey,
        }
    }

    pub fn old_keys(&self) -> usize {
        self.old.len()
    }

    /// The one decision of both rotation paths: decrypts `buffer` in place with the old key
    /// that opens it (`Some(position)`), else checks that the new key opens it (`None`:
    /// already current, buffer unchanged by the failed tries).
    fn decide(
        &self,
        iv: &[u8; IV_LEN],
        tag: &[u8; TAG_LEN],
        buffer: &mut [u8],
    ) -> Result<Option<usize>, EnvelopeError> {
        match self.old.open_in_place(iv, tag, buffer) {
            Ok(by) => Ok(Some(by)),
            Err(EnvelopeError::DoesNotOpen) => match self.new.open_in_place(iv, tag, buffer) {
                Ok(()) => Ok(None),
                Err(EnvelopeError::DoesNotOpen) => Err(self.neither),
                Err(other) => Err(other),
            },
            Err(other) => Err(other),
        }
    }

    /// Decides the fate of one stored secret. `reseal = false` classifies without encrypting
    /// (a dry run): `Resealed` then carries the envelope unchanged.
    pub fn rotate(&self, text: &str, reseal: bool) -> Result<Rotation, EnvelopeError> {
        let envelope = match Secret::parse(text)? {
            Secret::Empty => return Ok(Rotation::Empty),
            Secret::Sealed(envelope) => envelope,
        };
        let mut buffer = envelope.sealed.ciphertext.clone();
        let (iv, tag) = (envelope.sealed.iv, envelope.sealed.tag);
        match self.decide(&iv, &tag, &mut buffer)? {
            None => Ok(Rotation::AlreadyCurrent),
            Some(by) if reseal => Ok(Rotation::Resealed {
                envelope: self.new.reseal(envelope, &buffer)?,
                by,
            }),
            Some(by) => Ok(Rotation::Resealed { envelope, by }),
        }
    }
}

/// What rotating one envelope given as its parts amounts to.
#[derive(Debug)]
pub enum PartsRotation {
    AlreadyCurrent,
    /// Opened with old key `by` (from 0); the new parts (None in a dry run).
    Resealed {
        parts: Option<EncodedParts>,
        by: usize,
    },
}

impl Rotator {
    /// As [`Rotator::rotate`] for an envelope given as its decoded parts (the caller has
    /// checked that the value is a non-empty object): only the parts change, the caller keeps
    /// every other field.
    /// Consumes the envelope: its buffer is decrypted and re-encrypted in place.
    pub fn rotate_sealed(
        &self,
        mut sealed: Sealed,
        reseal: bool,
    ) -> Result<PartsRotation, EnvelopeError> {
        let (iv, tag) = (sealed.iv, sealed.tag);
        match self.decide(&iv, &tag, &mut sealed.ciphertext)? {
            None => Ok(PartsRotation::AlreadyCurrent),
            Some(by) => Ok(PartsRotation::Resealed {
                parts: if reseal {
                    Some(self.new.seal_in_place(&mut sealed)?)
                } else {
                    None
                },
                by,
            }),
        }
    }
}

impl Cipher {
    /// Classifies one stored secret against this key, never failing.
    pub fn status(&self, text: &str) -> Status {
        match Secret::parse(text) {
            Ok(Secret::Empty) => Status::Empty,
            Ok(Secret::Sealed(envelope)) => match self.open(&envelope) {
                Ok(_) => Status::Readable,
                Err(EnvelopeError::DoesNotOpen) => Status::NotReadable,
                Err(other) => Status::Malformed(other),
            },
            Err(other) => Status::Malformed(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Vectors {
        key_a: Key,
        key_b: Key,
        good: Vec<(String, Value)>,
        malformed: Vec<(String, Value)>,
        wrong_key: Value,
    }

    fn vectors() -> Vectors {
        let raw: Value =
            serde_json::from_str(include_str!("../tests/vectors/envelopes.json")).unwrap();
        let pairs = |name: &str, text: &str| -> Vec<(String, Value)> {
            raw[name]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (v[text].as_str().unwrap().to_owned(), v["envelope"].clone()))
                .collect()
        };
        Vectors {
            key_a: Key::parse(raw["key_a"].as_str().unwrap()).unwrap(),
            key_b: Key::parse(raw["key_b"].as_str().unwrap()).unwrap(),
            good: pairs("good", "plaintext"),
            malformed: pairs("malformed", "why"),
            wrong_key: raw["wrong_key"]["envelope"].clone(),
        }
    }

    fn sealed(value: &Value) -> Envelope {
        match Secret::from_value(value.clone()).unwrap() {
            Secret::Sealed(e) => e,
            Secret::Empty => panic!("expected an envelope"),
        }
    }

    #[test]
    fn node_envelopes_open_to_their_exact_plaintext() {
        let v = vectors();
        assert!(v.good.len() >= 6);
        let cipher = Cipher::new(&v.key_a);
        for (plaintext, envelope) in &v.good {
            let opened = cipher.open(&sealed(envelope)).unwrap();
            assert_eq!(opened.as_slice(), plaintext.as_bytes());
        }
    }

    #[test]
    fn node_envelopes_do_not_open_with_another_key() {
        let v = vectors();
        let cipher = Cipher::new(&v.key_b);
        for (_, envelope) in &v.good {
            assert_eq!(
                cipher.open(&sealed(envelope)).unwrap_err(),
                EnvelopeError::DoesNotOpen
            );
        }
    }

    #[test]
    fn every_malformed_vector_is_refused_with_its_reason() {
        let v = vectors();
        let cipher = Cipher::new(&v.key_a);
        let expected = |why: &str| -> EnvelopeError {
            match why {
                "tag altered" | "ciphertext altered" | "iv altered" => EnvelopeError::DoesNotOpen,
                "missing iv" => EnvelopeError::MissingField("iv"),
                "missing authTag" => EnvelopeError::MissingField("authTag"),
                "iv not base64" => EnvelopeError::InvalidBase64("iv"),
                "iv wrong length (16 bytes)" => EnvelopeError::WrongIvLength(16),
                "tag truncated to 8 bytes" => EnvelopeError::WrongTagLength(8),
                "unknown algorithm" => EnvelopeError::UnknownAlgorithm,
                "fields not strings" => EnvelopeError::NotAString("iv"),
                "not an object" | "a JSON string" => EnvelopeError::NotAnObject,
                other => panic!("vector {other:?} has no expectation: add one"),
            }
        };
        assert!(v.malformed.len() >= 12);
        for (why, envelope) in &v.malformed {
            let got = match Secret::parse(&envelope.to_string()) {
                Err(e) => e,
                Ok(Secret::Sealed(e)) => cipher.open(&e).unwrap_err(),
                Ok(Secret::Empty) => panic!("{why}: parsed as empty"),
            };
            assert_eq!(got, expected(why), "vector {why:?}");
            // Through the rotation path too: never rewritten.
            let rotator = Rotator::new(&v.key_a, &v.key_b);
            let err = rotator.rotate(&envelope.to_string(), true).unwrap_err();
            let want = match expected(why) {
                EnvelopeError::DoesNotOpen => EnvelopeError::OpensWithNeitherKey,
                other => other,
            };
            assert_eq!(err, want, "rotating vector {why:?}");
        }
    }

    #[test]
    fn wrong_key_vector_opens_only_with_key_b() {
        let v = vectors();
        let envelope = sealed(&v.wrong_key);
        assert_eq!(
            Cipher::new(&v.key_a).open(&envelope).unwrap_err(),
            EnvelopeError::DoesNotOpen
        );
        assert!(Cipher::new(&v.key_b).open(&envelope).is_ok());
        let text = v.wrong_key.to_string();
        assert_eq!(Cipher::new(&v.key_a).status(&text), Status::NotReadable);
        assert_eq!(Cipher::new(&v.key_b).status(&text), Status::Readable);
    }

    #[test]
    fn not_json_and_empty_objects() {
        assert_eq!(Secret::parse("").unwrap_err(), EnvelopeError::NotJson);
        assert_eq!(Secret::parse("{").unwrap_err(), EnvelopeError::NotJson);
        assert_eq!(
            Secret::parse("null").unwrap_err(),
            EnvelopeError::NotAnObject
        );
        assert_eq!(Secret::parse("42").unwrap_err(), EnvelopeError::NotAnObject);
        assert!(matches!(Secret::parse("{}"), Ok(Secret::Empty)));
        assert!(matches!(Secret::parse(" { } "), Ok(Secret::Empty)));
    }

    #[test]
    fn plaintext_that_is_not_utf8_is_refused() {
        let v = vectors();
        let cipher = Cipher::new(&v.key_a);
        let envelope = cipher.seal(&[0xff, 0xfe, b'{', b'}']).unwrap();
        assert_eq!(
            cipher.open(&envelope).unwrap_err(),
            EnvelopeError::PlaintextNotUtf8
        );
        let rotator = Rotator::new(&v.key_a, &v.key_b);
        assert_eq!(
            rotator.rotate(&envelope.to_json(), true).unwrap_err(),
            EnvelopeError::PlaintextNotUtf8
        );
    }

    #[test]
    fn rotation_reseals_exact_bytes_keeps_fields_and_uses_fresh_ivs() {
        let v = vectors();
        let rotator = Rotator::new(&v.key_a, &v.key_b);
        let new = Cipher::new(&v.key_b);
        let old = Cipher::new(&v.key_a);
        for (plaintext, envelope) in &v.good {
            let mut with_extra = envelope.clone();
            with_extra["keyId"] = json!("v1");
            with_extra["note"] = json!({"kept": [1, 2]});
            let text = with_extra.to_string();
            let Rotation::Resealed {
                envelope: out,
                by: 0,
            } = rotator.rotate(&text, true).unwrap()
            else {
                panic!("expected a re-seal");
            };
            assert_eq!(new.open(&out).unwrap().as_slice(), plaintext.as_bytes());
            assert_eq!(old.open(&out).unwrap_err(), EnvelopeError::DoesNotOpen);
            let json: Value = serde_json::from_str(&out.to_json()).unwrap();
            assert_eq!(json["note"], json!({"kept": [1, 2]}));
            assert_eq!(json["keyId"], "v1");
            assert_eq!(json["algorithm"], ALGORITHM);
            assert_ne!(json["iv"], with_extra["iv"]);
            let keys: Vec<&str> = json
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            let before: Vec<&str> = with_extra
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            assert_eq!(keys, before, "field order is kept");
            // Node writes padded standard base64; so do we.
            for field in ["iv", "ciphertext", "authTag"] {
                let s = json[field].as_str().unwrap();
                assert_eq!(STANDARD.encode(STANDARD.decode(s).unwrap()), s, "{field}");
            }
            // Re-running finds it current.
            assert!(matches!(
                rotator.rotate(&out.to_json(), true).unwrap(),
                Rotation::AlreadyCurrent
            ));
        }
    }

    /// The in-place path: an envelope under the new key fails the old key's tag check without
    /// its buffer being touched, so the new key still opens it; under neither key it is
    /// refused; a plaintext that is not UTF-8 is refused, not re-sealed.
    #[test]
    fn in_place_rotation_of_parts_classifies_every_case() {
        let v = vectors();
        let rotator = Rotator::new(&v.key_a, &v.key_b);
        let new = Cipher::new(&v.key_b);
        for (plaintext, envelope) in &v.good {
            let under_old = sealed(envelope).into_sealed();
            let PartsRotation::Resealed {
                parts: Some(parts),
                by: 0,
            } = rotator.rotate_sealed(under_old.clone(), true).unwrap()
            else {
                panic!("expected a re-seal");
            };
            let resealed = Sealed::decode(
                Field::Str(ALGORITHM.as_bytes()),
                Field::Str(parts.iv()),
                Field::Str(parts.ciphertext()),
                Field::Str(parts.auth_tag()),
            )
            .unwrap();
            assert_eq!(
                new.open_sealed(&resealed).unwrap().as_slice(),
                plaintext.as_bytes()
            );
            assert!(matches!(
                rotator.rotate_sealed(resealed.clone(), true),
                Ok(PartsRotation::AlreadyCurrent)
            ));
            assert!(matches!(
                rotator.rotate_sealed(under_old.clone(), false),
                Ok(PartsRotation::Resealed { parts: None, by: 0 })
            ));
            let key_c = Key::parse("6fYx3zeZFQ1n6rJbJdX6bHvZ9kD0n2o8o5H1lY0GkQ4=").unwrap();
            let stranger = Rotator::new(&v.key_b, &key_c);
            assert!(matches!(
                stranger.rotate_sealed(under_old, true),
                Err(EnvelopeError::OpensWithNeitherKey)
            ));
        }
        let (not_utf8, _) = Cipher::new(&v.key_a).seal_parts(&[0xff, 0xfe]).unwrap();
        assert!(matches!(
            rotator.rotate_sealed(not_utf8.clone(), true),
            Err(EnvelopeError::PlaintextNotUtf8)
        ));
        let debug = format!("{not_utf8:?}");
        assert!(!debug.contains('['), "Debug prints lengths only: {debug}");
    }

    /// Several old keys: each envelope is re-sealed under the new key, reporting the old key
    /// that opened it, whichever key opened the row before; an envelope under the new key is
    /// current; one under none of them is refused naming old_keys; a census names the key.
    #[test]
    fn several_old_keys_report_the_key_that_opened_each_envelope() {
        let v = vectors();
        let key_c = Key::parse("6fYx3zeZFQ1n6rJbJdX6bHvZ9kD0n2o8o5H1lY0GkQ4=").unwrap();
        let key_d = Key::generate().unwrap();
        let olds = [v.key_a.clone(), v.key_b.clone(), key_c.clone()];
        let rotator = Rotator::with_old_keys(&olds, &key_d);
        assert_eq!(rotator.old_keys(), 3);
        let new = Cipher::new(&key_d);
        let ring = KeyRing::new(&olds);
        // Alternating keys defeat "the previous row's key first": every order is exercised.
        for (i, which) in [2, 2, 0, 1, 0, 2, 1, 1].into_iter().enumerate() {
            let plaintext = format!("{{\"token\":\"t{i}\"}}");
            let envelope = Cipher::new(&olds[which])
                .seal(plaintext.as_bytes())
                .unwrap();
            assert_eq!(ring.identify_text(&envelope.to_json()), Ok(Some(which)));
            let Rotation::Resealed { envelope: out, by } =
                rotator.rotate(&envelope.to_json(), true).unwrap()
            else {
                panic!("expected a re-seal");
            };
            assert_eq!(by, which);
            assert_eq!(new.open(&out).unwrap().as_slice(), plaintext.as_bytes());
            assert!(matches!(
                rotator.rotate(&out.to_json(), true),
                Ok(Rotation::AlreadyCurrent)
            ));
            let (sealed, _) = Cipher::new(&olds[which])
                .seal_parts(plaintext.as_bytes())
                .unwrap();
            assert!(matches!(
                rotator.rotate_sealed(sealed.clone(), false),
                Ok(PartsRotation::Resealed { parts: None, by }) if by == which
            ));
            assert_eq!(ring.identify(sealed), Ok(which));
        }
        let stranger = Cipher::new(&Key::generate().unwrap()).seal(b"{}").unwrap();
        assert_eq!(
            rotator.rotate(&stranger.to_json(), true).unwrap_err(),
            EnvelopeError::OpensWithNoKey
        );
        assert_eq!(
            ring.identify_text(&stranger.to_json()),
            Err(EnvelopeError::DoesNotOpen)
        );
        assert_eq!(ring.identify_text("{}"), Ok(None));
        assert_eq!(ring.identify_text("[]"), Err(EnvelopeError::NotAnObject));
        // The one-key form keeps its message.
        assert_eq!(
            Rotator::new(&v.key_a, &key_d)
                .rotate(&stranger.to_json(), true)
                .unwrap_err(),
            EnvelopeError::OpensWithNeitherKey
        );
        // A plaintext that is not UTF-8 is refused, not re-sealed, by whichever key opens it.
        let not_utf8 = Cipher::new(&key_c).seal(&[0xff, 0xfe]).unwrap();
        assert_eq!(
            rotator.rotate(&not_utf8.to_json(), true).unwrap_err(),
            EnvelopeError::PlaintextNotUtf8
        );
    }

    #[test]
    fn ivs_never_repeat_across_pool_refills() {
        let mut pool = IvPool::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(IV_POOL_MAX * 3 + 7) {
            assert!(
                seen.insert(pool.take().unwrap()),
                "an IV was handed out twice"
            );
        }
        assert_eq!(
            pool.buffer.len(),
            IV_POOL_MAX * IV_LEN,
            "the block grows to its cap"
        );
        let mut fresh = IvPool::default();
        fresh.take().unwrap();
        assert_eq!(
            fresh.buffer.len(),
            IV_LEN,
            "a single seal draws a single IV"
        );
    }

    #[test]
    fn two_seals_of_the_same_plaintext_differ() {
        let v = vectors();
        let cipher = Cipher::new(&v.key_a);
        let a = cipher.seal(b"{\"token\":\"x\"}").unwrap();
        let b = cipher.seal(b"{\"token\":\"x\"}").unwrap();
        assert_ne!(a.sealed.iv, b.sealed.iv);
        assert_ne!(a.to_json(), b.to_json());
    }

    #[test]
    fn seal_writes_the_application_field_order() {
        let v = vectors();
        let json = Cipher::new(&v.key_a).seal(b"{}").unwrap().to_json();
        let value: Value = serde_json::from_str(&json).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys, ["algorithm", "keyId", "iv", "ciphertext", "authTag"]);
        assert_eq!(value["keyId"], KEY_ID);
    }

    #[test]
    fn dry_run_classifies_without_encrypting() {
        let v = vectors();
        let rotator = Rotator::new(&v.key_a, &v.key_b);
        let text = v.good[0].1.to_string();
        let Rotation::Resealed { envelope: same, .. } = rotator.rotate(&text, false).unwrap()
        else {
            panic!("expected the dry run to find it rotatable");
        };
        assert_eq!(same.into_value(), v.good[0].1);
        assert!(matches!(
            rotator.rotate("{}", false).unwrap(),
            Rotation::Empty
        ));
    }

    #[test]
    fn status_reports_each_kind() {
        let v = vectors();
        let cipher = Cipher::new(&v.key_a);
        assert_eq!(cipher.status("{}"), Status::Empty);
        assert_eq!(cipher.status(&v.good[1].1.to_string()), Status::Readable);
        assert_eq!(
            cipher.status("[1]"),
            Status::Malformed(EnvelopeError::NotAnObject)
        );
    }

    #[test]
    fn error_messages_never_carry_envelope_values() {
        let v = vectors();
        let rotator = Rotator::new(&v.key_a, &v.key_b);
        for (_, envelope) in v.malformed.iter().chain(v.good.iter().take(0)) {
            if let Err(e) = rotator.rotate(&envelope.to_string(), true) {
                let msg = e.to_string();
                for field in ["iv", "ciphertext", "authTag"] {
                    if let Some(s) = envelope.get(field).and_then(Value::as_str) {
                        assert!(!msg.contains(s), "{msg}");
                    }
                }
            }
        }
    }
}
