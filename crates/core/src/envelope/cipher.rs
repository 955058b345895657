//! The cryptography of an envelope: one key ([`Cipher`]), several keys tried in turn
//! ([`KeyRing`]), the old-then-new key decision of a rotation ([`Rotator`]), and the one
//! classification of a stored secret against keys ([`Status`]).

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::error::EnvelopeError;
use super::format::{
    EncodedParts, Envelope, Sealed, Secret, ALGORITHM, FIELD_ALGORITHM, FIELD_CIPHERTEXT, FIELD_IV,
    FIELD_KEY_ID, FIELD_TAG, IV_LEN, KEY_ID, TAG_LEN,
};
use super::ivpool::IvPool;
use crate::key::Key;
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

    /// Classifies a stored secret as read (`None`: `{}`) against this key, never failing.
    pub fn status_of(&self, read: Result<Option<Sealed>, EnvelopeError>) -> Status {
        Status::of(
            read.and_then(|sealed| sealed.map(|s| self.open_sealed(&s).map(|_| 0)).transpose()),
        )
    }

    /// As [`Cipher::status_of`] for a stored secret's JSON text.
    pub fn status(&self, text: &str) -> Status {
        self.status_of(Secret::parse_sealed(text))
    }
}

/// What rotating one stored secret amounts to, whichever path read it. `T` is what a re-seal
/// yields: the whole envelope (JSON text path), its re-sealed parts (jsonb path; `None` in a
/// dry run), or what the row helpers stash for the UPDATE's target list.
#[derive(Debug)]
pub enum Rotation<T> {
    /// `{}`: nothing stored, left untouched.
    Empty,
    /// Already opens with the new key: left untouched.
    AlreadyCurrent,
    /// Opened with old key `by` (its position among the old keys, from 0) and re-sealed under
    /// the new one.
    Resealed { value: T, by: usize },
}

/// What a rotation would do to one stored secret ([`Rotator::dry_run`]): nothing is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRun {
    Empty,
    AlreadyCurrent,
    /// Opens with old key `by`: a rotation would re-seal it.
    WouldReseal {
        by: usize,
    },
}

impl<T> Rotation<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Rotation<U> {
        match self {
            Rotation::Empty => Rotation::Empty,
            Rotation::AlreadyCurrent => Rotation::AlreadyCurrent,
            Rotation::Resealed { value, by } => Rotation::Resealed {
                value: f(value),
                by,
            },
        }
    }
}

/// What checking one stored secret against one or more keys finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Empty,
    /// Opens with key `by` (its position among the keys, from 0; always 0 for a [`Cipher`]).
    Readable {
        by: usize,
    },
    NotReadable,
    Malformed(EnvelopeError),
}

impl Status {
    /// The one classification of a stored secret, from reading it (`None`: `{}`) and trying
    /// the keys on it (the position of the key that opened it).
    fn of(opened: Result<Option<usize>, EnvelopeError>) -> Status {
        match opened {
            Ok(None) => Status::Empty,
            Ok(Some(by)) => Status::Readable { by },
            Err(EnvelopeError::DoesNotOpen) => Status::NotReadable,
            Err(other) => Status::Malformed(other),
        }
    }
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
        Secret::parse_sealed(text)?
            .map(|sealed| self.identify(sealed))
            .transpose()
    }

    /// Classifies a stored secret as read (`None`: `{}`) against these keys, never failing.
    pub fn status(&self, read: Result<Option<Sealed>, EnvelopeError>) -> Status {
        Status::of(read.and_then(|sealed| sealed.map(|s| self.identify(s)).transpose()))
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

    /// Rotates one stored secret: re-sealed under the new key when an old key opens it.
    pub fn rotate(&self, text: &str) -> Result<Rotation<Envelope>, EnvelopeError> {
        let envelope = match Secret::parse(text)? {
            Secret::Empty => return Ok(Rotation::Empty),
            Secret::Sealed(envelope) => envelope,
        };
        let mut buffer = envelope.sealed.ciphertext.clone();
        let (iv, tag) = (envelope.sealed.iv, envelope.sealed.tag);
        match self.decide(&iv, &tag, &mut buffer)? {
            None => Ok(Rotation::AlreadyCurrent),
            Some(by) => Ok(Rotation::Resealed {
                value: self.new.reseal(envelope, &buffer)?,
                by,
            }),
        }
    }

    /// What [`Rotator::rotate`] would do to one stored secret, without encrypting anything.
    pub fn dry_run(&self, text: &str) -> Result<DryRun, EnvelopeError> {
        let envelope = match Secret::parse(text)? {
            Secret::Empty => return Ok(DryRun::Empty),
            Secret::Sealed(envelope) => envelope,
        };
        self.dry_run_sealed(envelope.sealed)
    }

    /// As [`Rotator::rotate`] for an envelope given as its decoded parts (the caller has
    /// checked that the value is a non-empty object): only the parts change, the caller keeps
    /// every other field. Never `Empty`. Consumes the envelope: its buffer is decrypted and
    /// re-encrypted in place.
    pub fn rotate_sealed(
        &self,
        mut sealed: Sealed,
    ) -> Result<Rotation<EncodedParts>, EnvelopeError> {
        let (iv, tag) = (sealed.iv, sealed.tag);
        match self.decide(&iv, &tag, &mut sealed.ciphertext)? {
            None => Ok(Rotation::AlreadyCurrent),
            Some(by) => Ok(Rotation::Resealed {
                value: self.new.seal_in_place(&mut sealed)?,
                by,
            }),
        }
    }

    /// What [`Rotator::rotate_sealed`] would do, without encrypting anything. Never `Empty`.
    pub fn dry_run_sealed(&self, mut sealed: Sealed) -> Result<DryRun, EnvelopeError> {
        let (iv, tag) = (sealed.iv, sealed.tag);
        Ok(match self.decide(&iv, &tag, &mut sealed.ciphertext)? {
            None => DryRun::AlreadyCurrent,
            Some(by) => DryRun::WouldReseal { by },
        })
    }
}
