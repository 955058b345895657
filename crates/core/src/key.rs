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

/// Decodes the normalised key text (standard alphabet, no padding, nothing else). Node keeps
/// whatever bits the last character carries past the 32nd byte instead of refusing them, so
/// a key whose last character differs only there is the same key to the application.
const NORMALISED: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// Base64 characters that spell exactly 32 bytes: 32 * 8 / 6 rounded up.
const KEY_DIGITS: usize = 43;

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
    /// Parses a key exactly as the application reads `CREDENTIAL_ENCRYPTION_KEY`:
    /// `Buffer.from(key.trim(), 'base64')` of Node, which must give 32 bytes. Node's decoder
    /// takes both alphabets at once ('-' is '+', '_' is '/'), skips every other character
    /// (whitespace inside the key, line breaks of a wrapped key, any punctuation), ends the
    /// key at the first '=' whatever follows it, keeps the bits of the last character past
    /// the 32nd byte, and drops a dangling last character. Every text it reads as 32 bytes is
    /// the same key here, with one deliberate exception (see `node_skips`).
    pub fn parse(text: &str) -> Result<Key, KeyError> {
        let trimmed = text.trim_matches(is_js_whitespace);
        if trimmed.is_empty() {
            return Err(KeyError::Empty);
        }
        let (body, tail) = trimmed.split_once('=').unwrap_or((trimmed, ""));
        // Sized so that pushing never reallocates and leaves a copy of key text unwiped.
        let mut digits = Zeroizing::new(String::with_capacity(body.len()));
        // Only chooses which reason a refusal gives; never whether a key is accepted.
        let mut looks_like_base64 = tail.chars().all(|c| c == '=' || is_js_whitespace(c));
        for c in body.chars() {
            match c {
                'A'..='Z' | 'a'..='z' | '0'..='9' | '+' | '/' => digits.push(c),
                '-' => digits.push('+'),
                '_' => digits.push('/'),
                // Not `is_js_whitespace`: inside the key, U+202F is a digit to Node.
                c if node_skips(c) => looks_like_base64 &= is_js_whitespace(c),
                _ => return Err(KeyError::NotBase64),
            }
        }
        if digits.len() != KEY_DIGITS {
            // Node writes a byte for every character after the first of each group of four.
            let len = digits.len() * 3 / 4;
            if !looks_like_base64 || digits.len() % 4 == 1 {
                return Err(KeyError::NotBase64);
            }
            return Err(KeyError::WrongLength(len));
        }
        let decoded = Zeroizing::new(
            NORMALISED
                .decode(digits.as_bytes())
                .map_err(|_| KeyError::NotBase64)?,
        );
        if decoded.len() != KEY_LEN {
            return Err(KeyError::WrongLength(decoded.len()));
        }
        let mut key = Key([0; KEY_LEN]);
        key.0.copy_from_slice(&decoded);
        Ok(key)
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

/// What JavaScript's `String.prototype.trim` removes: WhiteSpace and LineTerminator of
/// ECMAScript, which differ from Rust's `char::is_whitespace` (U+FEFF yes, U+0085 no). A
/// character trimmed by the application never reaches its decoder; U+202F, for one, would
/// read as '/' there (see `node_skips`).
fn is_js_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{9}'..='\u{d}'
            | ' '
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
            | '\u{feff}'
    )
}

/// Whether Node's decoder passes over `c`, a character that is not a base64 digit, without
/// it changing the key.
///
/// Node reads a JavaScript string one UTF-16 code unit at a time and looks up only the low
/// byte of each: '!' or 'é' (0xE9) is skipped, but 'Ł' (U+0141) reads as 'A', U+202F inside a
/// key as '/', and an emoji's high surrogate (U+D83D) as '=', which ends the key. Refusing
/// those instead of copying the truncation is deliberate: it would make the key depend on
/// exactly which non-ASCII characters arrive, and what arrives is the key file's text after
/// the client's and the server's encoding conversions, which leave ASCII alone but not
/// necessarily the rest. A key read differently from the application's would, as `new_key`,
/// seal every secret under a key the application does not have; a refusal only asks for a
/// corrected spelling. A non-ASCII character none of whose code units Node reads is skipped
/// here too: it cannot change the key.
fn node_skips(c: char) -> bool {
    let mut units = [0u16; 2];
    c.encode_utf16(&mut units).iter().all(|unit| {
        let low = unit.to_le_bytes()[0];
        !(low.is_ascii_alphanumeric() || matches!(low, b'+' | b'/' | b'-' | b'_' | b'='))
    })
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

    /// Bytes whose standard encoding holds both '+' and '/', to tell the alphabets apart.
    fn plus_and_slash_key() -> ([u8; KEY_LEN], String) {
        let bytes: [u8; KEY_LEN] = std::array::from_fn(|i| [0xfb, 0xff, 0xbf][i % 3]);
        let standard = STANDARD.encode(bytes);
        assert!(standard.contains('+') && standard.contains('/'), "test key");
        (bytes, standard)
    }

    fn wrap(text: &str, width: usize, eol: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        let lines: Vec<String> = chars.chunks(width).map(|c| c.iter().collect()).collect();
        lines.join(eol) + eol
    }

    /// Each spelling, which Node's `Buffer.from(key.trim(), 'base64')` reads as `expected`.
    fn assert_same_key(spellings: &[String], expected: &Key) {
        for (i, spelling) in spellings.iter().enumerate() {
            assert_eq!(Key::parse(spelling).as_ref(), Ok(expected), "spelling #{i}");
        }
    }

    #[test]
    fn tolerates_surrounding_whitespace_as_javascript_trims_it() {
        let canonical = Key::parse(KEY_A).unwrap();
        let spellings: Vec<String> = [
            "  ",
            "\n",
            "\r\n",
            "\t",
            "\u{b}\u{c}",
            "\u{feff}",
            "\u{a0}",
            "\u{202f}",
            "\u{205f}",
            "\u{3000}",
            "\u{2028}",
        ]
        .iter()
        .map(|ws| format!("{ws}{KEY_A}{ws}"))
        .collect();
        assert_same_key(&spellings, &canonical);
    }

    #[test]
    fn tolerates_any_padding_and_ignores_what_follows_it() {
        let canonical = Key::parse(KEY_A).unwrap();
        let unpadded = KEY_A.trim_end_matches('=');
        let spellings = [
            unpadded.to_owned(),
            format!("{unpadded}=="),
            format!("{unpadded}==="),
            format!("{unpadded} = \n"),
            // Node ends the key at the first '=': a second key after it changes nothing.
            format!("{KEY_A}PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc="),
            format!("{unpadded}=junk!\u{141}"),
        ];
        assert_same_key(&spellings, &canonical);
    }

    #[test]
    fn tolerates_both_alphabets_even_mixed() {
        let (bytes, standard) = plus_and_slash_key();
        let expected = Key::from_bytes(bytes);
        let url = standard.replace('+', "-").replace('/', "_");
        let mixed_pairs = standard.replacen('+', "-", 1).replacen('/', "_", 1);
        let mixed_halves = format!("{}{}", &url[..20], &standard[20..]);
        assert!(mixed_pairs.contains(['+', '/']) && mixed_pairs.contains(['-', '_']));
        let spellings = [
            url.clone(),
            url.trim_end_matches('=').to_owned(),
            mixed_pairs,
            mixed_halves,
        ];
        assert_same_key(&spellings, &expected);
    }

    #[test]
    fn tolerates_whitespace_and_line_breaks_inside() {
        let (bytes, standard) = plus_and_slash_key();
        let expected = Key::from_bytes(bytes);
        let spaced: String = standard
            .chars()
            .enumerate()
            .flat_map(|(i, c)| [c, [' ', '\t', '\n', '\r'][i % 4]])
            .collect();
        let spellings = [
            wrap(&standard, 4, " "),
            wrap(&standard, 16, "\n"),
            wrap(&standard, 20, "\r\n"),
            wrap(&standard, 8, "\r\n\t"),
            spaced,
        ];
        assert_same_key(&spellings, &expected);
    }

    #[test]
    fn skips_what_node_skips_inside() {
        let canonical = Key::parse(KEY_A).unwrap();
        // U+1F310 is D83C DF10 in UTF-16: neither low byte is a digit or '='.
        assert!(node_skips('\u{1f310}'));
        let spellings = [
            format!("{}.{}", &KEY_A[..10], &KEY_A[10..]),
            format!("{}!*:;\"'{}", &KEY_A[..20], &KEY_A[20..]),
            format!("{}\u{7f}\u{1}{}", &KEY_A[..20], &KEY_A[20..]),
            format!("{}é\u{a0}\u{3000}\u{2028}{}", &KEY_A[..20], &KEY_A[20..]),
            format!("{}\u{1f310}{}", &KEY_A[..20], &KEY_A[20..]),
        ];
        assert_same_key(&spellings, &canonical);
    }

    #[test]
    fn ignores_the_bits_past_the_key_in_the_last_character_like_node() {
        // KEY_A ends in "U4Q=": the last digit carries 4 key bits and 2 that Node drops.
        let canonical = Key::parse(KEY_A).unwrap();
        let spellings: Vec<String> = ['R', 'S', 'T']
            .iter()
            .map(|last| format!("{}{last}=", &KEY_A[..42]))
            .collect();
        assert_same_key(&spellings, &canonical);
        assert_ne!(
            Key::parse(&format!("{}U=", &KEY_A[..42])).unwrap(),
            canonical
        );
    }

    #[test]
    fn refuses_non_ascii_that_node_reads_as_part_of_the_key() {
        // Node reads each by the low byte of a UTF-16 code unit, here as the last digit of
        // the key: the application runs with each of these spellings.
        for (c, read) in [
            ('\u{141}', 'A'),
            ('\u{ff41}', 'a'),
            ('\u{202f}', '/'),
            ('\u{205f}', '_'),
        ] {
            assert!(!node_skips(c), "{:x}", c as u32);
            assert!(Key::parse(&format!("{}{read}=", &KEY_A[..42])).is_ok());
            let spelling = format!("{}{c}=", &KEY_A[..42]);
            assert_eq!(
                Key::parse(&spelling),
                Err(KeyError::NotBase64),
                "{:x}",
                c as u32
            );
        }
        // U+1F600 is D83D DE00: Node reads D83D as '=', the end of the key.
        assert!(!node_skips('\u{1f600}'));
        assert!(Key::parse(&format!("{}=junk", &KEY_A[..43])).is_ok());
        let spelling = format!("{}\u{1f600}junk", &KEY_A[..43]);
        assert_eq!(Key::parse(&spelling), Err(KeyError::NotBase64));
        // Trimmed from the ends, U+202F is never read; before the padding it is.
        let inside = format!("{}\u{202f}=\u{202f}", &KEY_A[..43]);
        assert_eq!(Key::parse(&inside), Err(KeyError::NotBase64));
    }

    #[test]
    fn javascript_whitespace_is_what_trim_removes() {
        for c in ['\u{feff}', '\u{a0}', '\u{2028}', '\u{3000}', '\u{b}'] {
            assert!(is_js_whitespace(c), "{:x}", c as u32);
        }
        // Rust's whitespace but not JavaScript's; U+180E left Zs in Unicode 6.3; others.
        for c in ['\u{85}', '\u{180e}', '\u{200b}', 'A', '='] {
            assert!(!is_js_whitespace(c), "{:x}", c as u32);
        }
    }

    #[test]
    fn refuses_what_is_not_a_32_byte_key() {
        assert_eq!(Key::parse(""), Err(KeyError::Empty));
        assert_eq!(Key::parse("   \t"), Err(KeyError::Empty));
        assert_eq!(Key::parse("\u{feff}\r\n"), Err(KeyError::Empty));
        assert_eq!(Key::parse("not a key!"), Err(KeyError::NotBase64));
        // 25 letters: 4n + 1 digits are no encoder's output.
        assert_eq!(
            Key::parse("correct horse battery staple"),
            Err(KeyError::NotBase64)
        );
        assert_eq!(Key::parse("AAAA"), Err(KeyError::WrongLength(3)));
        assert_eq!(Key::parse("===="), Err(KeyError::WrongLength(0)));
        let sixteen = STANDARD.encode([7u8; 16]);
        assert_eq!(Key::parse(&sixteen), Err(KeyError::WrongLength(16)));
        let thirty_three = STANDARD.encode([7u8; 33]);
        assert_eq!(Key::parse(&thirty_three), Err(KeyError::WrongLength(33)));
        // A digit short, a digit too many (44 digits are 33 bytes to Node).
        assert_eq!(Key::parse(&KEY_A[..42]), Err(KeyError::WrongLength(31)));
        assert_eq!(
            Key::parse(&format!("{}A=", &KEY_A[..43])),
            Err(KeyError::WrongLength(33))
        );
        // An early '=' ends the key for Node, however much follows.
        assert_eq!(
            Key::parse(&format!("AAAA={KEY_A}")),
            Err(KeyError::NotBase64)
        );
        assert_eq!(
            Key::parse(&format!("{}={}", &KEY_A[..20], &KEY_A[20..])),
            Err(KeyError::NotBase64)
        );
        assert_eq!(
            Key::parse(&format!("{}!", &KEY_A[..42])),
            Err(KeyError::NotBase64)
        );
    }

    #[test]
    fn errors_and_debug_never_show_the_key() {
        let key = Key::parse(KEY_A).unwrap();
        assert!(!format!("{key:?}").contains(&KEY_A[..8]));
        let refused = [
            KEY_A[..40].to_owned(),
            format!("{}!", &KEY_A[..42]),
            format!("{}\u{141}{}", &KEY_A[..20], &KEY_A[20..]),
            format!("{}A", &KEY_A[..43]),
        ];
        for spelling in &refused {
            let err = Key::parse(spelling).unwrap_err().to_string();
            assert!(
                !err.contains(&KEY_A[..8]) && !err.contains(&KEY_A[30..38]),
                "{err}"
            );
        }
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
