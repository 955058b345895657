//! Keys: parsing what the application accepts, fingerprints, generation.
//!
//! Plain Rust, no pgrx: the SQL layer decides which argument a failure names.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// AES-256 needs exactly this many key bytes.
pub const KEY_LEN: usize = 32;

/// The label the fingerprint MAC is computed over. Changing it changes every fingerprint ever
/// recorded in an audit trail, so it is versioned rather than edited.
const FINGERPRINT_LABEL: &[u8] = b"credential_rotate key fingerprint v1";

/// Bytes of the HMAC kept in a fingerprint: 64 bits tell keys apart in an audit log without
/// giving a brute-force oracle anything a 256-bit random key would notice.
const FINGERPRINT_BYTES: usize = 8;

/// Node's `Buffer.from(s, 'base64')` accepts padded and unpadded input in either alphabet; an
/// operator pasting a key from a secret store should not be refused for that.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(false);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Why a key was refused. Never carries any part of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("it is NULL")]
    Null,
    #[error("it is empty")]
    Empty,
    #[error("it is not valid base64")]
    NotBase64,
    #[error("it decodes to {0} bytes, not 32")]
    WrongLength(usize),
}

/// A 32-byte AES-256 key. Wiped from memory when dropped; `Debug` never shows the bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    /// Parses a key the way the application reads `CREDENTIAL_ENCRYPTION_KEY`: base64 of
    /// exactly 32 bytes, surrounding whitespace, missing padding and the URL-safe alphabet
    /// tolerated.
    pub fn parse(text: &str) -> Result<Key, KeyError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(KeyError::Empty);
        }
        let url_safe = trimmed.contains(['-', '_']);
        let engine = if url_safe {
            &URL_SAFE_LENIENT
        } else {
            &STANDARD_LENIENT
        };
        let decoded = Zeroizing::new(engine.decode(trimmed).map_err(|_| KeyError::NotBase64)?);
        let bytes: [u8; KEY_LEN] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(decoded.len()))?;
        Ok(Key(bytes))
    }

    #[cfg(test)]
    fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Result<Key, getrandom::Error> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::getrandom(bytes.as_mut())?;
        Ok(Key(*bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key as the application stores it: standard padded base64, 44 characters.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0))
    }

    /// A short stable identifier for logs and audit rows: HMAC-SHA256 keyed with the key over
    /// a fixed label, truncated. A MAC rather than a plain hash so that the fingerprint is a
    /// PRF output and not a digest of the key bytes themselves.
    pub fn fingerprint(&self) -> String {
        // ok: HMAC accepts keys of any length, new_from_slice cannot fail for 32 bytes.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(FINGERPRINT_LABEL);
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(FINGERPRINT_BYTES * 2);
        for byte in &digest[..FINGERPRINT_BYTES] {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q=";

    #[test]
    fn parses_the_application_format() {
        let key = Key::parse(KEY_A).unwrap();
        assert_eq!(key.to_base64().as_str(), KEY_A);
    }

    #[test]
    fn tolerates_whitespace_missing_padding_and_url_safe_alphabet() {
        let canonical = Key::parse(KEY_A).unwrap();
        assert_eq!(Key::parse(&format!("  {KEY_A}\n")).unwrap(), canonical);
        assert_eq!(Key::parse(KEY_A.trim_end_matches('=')).unwrap(), canonical);
        // A key whose standard encoding has both '+' and '/'.
        let bytes: [u8; KEY_LEN] = std::array::from_fn(|i| [0xfb, 0xff, 0xbf][i % 3]);
        let standard = STANDARD.encode(bytes);
        assert!(
            standard.contains('+') && standard.contains('/'),
            "{standard}"
        );
        let url = standard.replace('+', "-").replace('/', "_");
        assert_eq!(Key::parse(&url).unwrap(), Key::from_bytes(bytes));
        assert_eq!(
            Key::parse(url.trim_end_matches('=')).unwrap(),
            Key::from_bytes(bytes)
        );
    }

    #[test]
    fn refuses_what_is_not_a_32_byte_key() {
        assert_eq!(Key::parse(""), Err(KeyError::Empty));
        assert_eq!(Key::parse("   \t"), Err(KeyError::Empty));
        assert_eq!(Key::parse("not a key!"), Err(KeyError::NotBase64));
        // Both alphabets at once is not something either encoder produces.
        assert_eq!(
            Key::parse("y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4+_"),
            Err(KeyError::NotBase64)
        );
        assert_eq!(Key::parse("AAAA"), Err(KeyError::WrongLength(3)));
        let sixteen = STANDARD.encode([7u8; 16]);
        assert_eq!(Key::parse(&sixteen), Err(KeyError::WrongLength(16)));
        let thirty_three = STANDARD.encode([7u8; 33]);
        assert_eq!(Key::parse(&thirty_three), Err(KeyError::WrongLength(33)));
    }

    #[test]
    fn errors_and_debug_never_show_the_key() {
        let key = Key::parse(KEY_A).unwrap();
        assert!(!format!("{key:?}").contains(&KEY_A[..8]));
        let err = Key::parse(&KEY_A[..40]).unwrap_err().to_string();
        assert!(!err.contains(&KEY_A[..8]), "{err}");
    }

    #[test]
    fn fingerprint_is_stable_short_and_distinct() {
        let a = Key::parse(KEY_A).unwrap();
        let b = Key::parse("PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc=").unwrap();
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        assert!(a.fingerprint().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.fingerprint(), b.fingerprint());
        // Pinned to values computed by Node's crypto.createHmac: an audit trail compares
        // fingerprints across versions of the extension and across tools.
        assert_eq!(a.fingerprint(), "8d3197a7dd0e26e7");
        assert_eq!(b.fingerprint(), "9759add3a02dea8f");
    }

    #[test]
    fn generated_keys_are_fresh_and_parse_back() {
        let k1 = Key::generate().unwrap();
        let k2 = Key::generate().unwrap();
        assert_ne!(k1, k2);
        let text = k1.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(Key::parse(&text).unwrap(), k1);
    }
}
