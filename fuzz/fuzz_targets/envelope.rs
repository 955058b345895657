//! Any bytes as a stored secret and as a key: the parser, the opener and the rotation must
//! answer with a value or an error, never a panic or a hang.
#![no_main]

use credential_rotate_core::envelope::{Cipher, Rotation, Rotator};
use credential_rotate_core::key::Key;
use libfuzzer_sys::fuzz_target;

const KEY_A: &str = "y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q=";
const KEY_B: &str = "PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc=";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = Key::parse(text) {
        assert_eq!(key.fingerprint().len(), 16);
    }
    let (Ok(a), Ok(b)) = (Key::parse(KEY_A), Key::parse(KEY_B)) else {
        return;
    };
    let _ = Cipher::new(&a).status(text);
    let rotator = Rotator::new(&a, &b);
    if let Ok(Rotation::Resealed {
        value: envelope, ..
    }) = rotator.rotate(text)
    {
        // Whatever was re-sealed must now be current.
        let again = rotator.rotate(&envelope.into_json());
        assert!(matches!(again, Ok(Rotation::AlreadyCurrent)));
    }
});
