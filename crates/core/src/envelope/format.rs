//! The envelope format: its fields and their encodings, parsing a stored secret and writing
//! one back. No cryptography here: whether an envelope opens is [`super::cipher`]'s question.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{DecodeSliceError, Engine};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::error::EnvelopeError;

pub const ALGORITHM: &str = "aes-256-gcm";
/// A format tag the application writes and never checks; kept as found when re-sealing.
pub const KEY_ID: &str = "v1";
pub const IV_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

// The envelope's field names, for both readers (serde's map and the jsonb container).
pub const FIELD_ALGORITHM: &str = "algorithm";
pub const FIELD_KEY_ID: &str = "keyId";
pub const FIELD_IV: &str = "iv";
pub const FIELD_CIPHERTEXT: &str = "ciphertext";
pub const FIELD_TAG: &str = "authTag";

/// The fields [`Sealed::decode`] reads, in its argument order.
pub const DECODED_FIELDS: [&str; 4] = [FIELD_ALGORITHM, FIELD_IV, FIELD_CIPHERTEXT, FIELD_TAG];

/// Node decodes base64 with or without padding; we read the same way and always write padded
/// (`STANDARD`, as `Key::to_base64` does), as Node does. A key is read by its own, more lenient
/// rule (`key::NORMALISED`): the application trims and forgives key text, not envelopes.
const READ_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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
    pub(super) fields: Map<String, Value>,
    pub(super) sealed: Sealed,
}

/// The binary parts of an envelope, decoded and length-checked.
#[derive(Clone)]
pub struct Sealed {
    pub(super) iv: [u8; IV_LEN],
    /// Zeroized on drop: a rotation decrypts it in place, so for a moment it is plaintext.
    pub(super) ciphertext: Zeroizing<Vec<u8>>,
    pub(super) tag: [u8; TAG_LEN],
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
    pub(super) fn encode(
        iv: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
    ) -> Result<EncodedParts, EnvelopeError> {
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
    #[cfg(any(test, feature = "test-support"))]
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
    /// opens is a question for a [`super::Cipher`].
    pub fn parse(text: &str) -> Result<Secret, EnvelopeError> {
        let value: Value = serde_json::from_str(text).map_err(|_| EnvelopeError::NotJson)?;
        Secret::from_value(value)
    }

    /// A stored secret's text as the binary parts to open: `None` for `{}`. The jsonb path's
    /// `RawJsonb::sealed` gives the same answer for the same value.
    pub fn parse_sealed(text: &str) -> Result<Option<Sealed>, EnvelopeError> {
        Ok(match Secret::parse(text)? {
            Secret::Empty => None,
            Secret::Sealed(envelope) => Some(envelope.into_sealed()),
        })
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
    pub(super) fn from_fields(fields: Map<String, Value>) -> Result<Envelope, EnvelopeError> {
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
