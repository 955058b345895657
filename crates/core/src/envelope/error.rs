//! Why a stored secret could not be used.

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
