//! The application's envelope format and its cryptography.
//!
//! An envelope is the JSON object Freeboard writes with Node's `crypto`:
//! `{"algorithm":"aes-256-gcm","keyId":"v1","iv":…,"ciphertext":…,"authTag":…}` with
//! standard padded base64, a 12-byte IV, a 16-byte tag and no associated data. Plain Rust, no
//! pgrx: everything here can be unit-tested and fuzzed without a server.
//!
//! - [`format`]: the envelope's fields, parsing and serialising them (no cryptography).
//! - [`cipher`]: opening and sealing under one key ([`Cipher`]), several keys tried in turn
//!   ([`KeyRing`]), and the old-then-new key decision of a rotation ([`Rotator`]).
//! - [`ivpool`]: fresh random IVs, drawn in blocks.
//! - [`error`]: why a stored secret could not be used.

pub mod cipher;
pub mod error;
pub mod format;
pub mod ivpool;
#[cfg(test)]
mod tests;

pub use cipher::{Cipher, DryRun, KeyRing, Rotation, Rotator, Status};
pub use error::EnvelopeError;
pub use format::{
    EncodedParts, Envelope, Field, Sealed, Secret, ALGORITHM, IV_LEN, KEY_ID, TAG_LEN,
};
