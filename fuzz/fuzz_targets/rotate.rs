//! Any bytes as a stored jsonb container, rotated as a jsonb column is: the four fields read
//! from the layout by the extension's own mapping (`stored::envelope_fields`), decoded, opened
//! with the old key and re-sealed with the new one in place (`rotate_sealed`), and the new
//! parts spliced into a copy of the container. The outcome must be what opening the envelope
//! with each key says it must be: a clean error, "already current", or a container whose
//! every other entry is byte for byte as stored and that opens with the new key to the
//! plaintext the old key opened.
#![no_main]

use credential_rotate_core::container::{Object, Root, JENTRY_ISSTRING};
use credential_rotate_core::envelope::{
    Cipher, DryRun, EnvelopeError, Field, Rotation, Rotator, Sealed,
};
use credential_rotate_core::key::Key;
use credential_rotate_core::stored::envelope_fields as fields;
use libfuzzer_sys::fuzz_target;

/// key_a and key_b of tests/vectors/envelopes.json: the seeds are sealed with key_a.
const KEY_A: &str = "y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q=";
const KEY_B: &str = "PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc=";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let Some(Root::Object(object)) = Root::parse(bytes) else {
        return;
    };
    let (Ok(a), Ok(b)) = (Key::parse(KEY_A), Key::parse(KEY_B)) else {
        panic!("the test keys do not parse");
    };
    let (old, new) = (Cipher::new(&a), Cipher::new(&b));
    let rotator = Rotator::new(&a, &b);
    if mode & 1 == 0 {
        rotate_and_check(&object, &rotator, &old, &new);
        return;
    }
    // Odd modes first seal a plaintext under the old key into the fuzzed container, so that
    // any container holding the fields reaches the re-seal, not only those whose tag still
    // checks out. The plaintext is the end of the input (the container's data, where the
    // strings are): not always UTF-8, on purpose.
    let plaintext = &bytes[bytes.len().saturating_sub(usize::from(mode >> 1))..];
    let Ok((_, parts)) = old.seal_parts(plaintext) else {
        panic!("sealing a short plaintext failed");
    };
    let Some(staged) = object.with_strings(&parts.fields()) else {
        return;
    };
    let Some(Root::Object(staged)) = Root::parse(&staged) else {
        panic!("a splice does not read back");
    };
    rotate_and_check(&staged, &rotator, &old, &new);
});

fn rotate_and_check(object: &Object<'_>, rotator: &Rotator, old: &Cipher, new: &Cipher) {
    // `{}` never reaches a rotation: the caller counts it as empty.
    if object.is_empty() {
        return;
    }
    let [algorithm, iv, ciphertext, tag] = fields(object);
    let Ok(sealed) = Sealed::decode(algorithm, iv, ciphertext, tag) else {
        return;
    };
    // What each key opens the envelope to: the oracle for the rotation's answer.
    let under_old = old.open_sealed(&sealed);
    let under_new = new.open_sealed(&sealed);
    let dry_run = rotator.dry_run_sealed(sealed.clone());
    match (&under_old, &dry_run) {
        (Ok(_), Ok(DryRun::WouldReseal { by: 0 })) => {}
        (Ok(_), _) => panic!("a dry run did not find rotatable an envelope the old key opens"),
        (Err(_), Ok(DryRun::WouldReseal { .. })) => {
            panic!("a dry run would re-seal an envelope the old key does not open")
        }
        _ => {}
    }
    match rotator.rotate_sealed(sealed) {
        Ok(Rotation::Resealed {
            value: parts,
            by: 0,
        }) => {
            let Ok(plaintext) = under_old else {
                panic!("re-sealed an envelope the old key does not open");
            };
            // The parts alone, as the generic path would write them.
            let resealed = Sealed::decode(
                Field::Str(b"aes-256-gcm"),
                Field::Str(parts.iv()),
                Field::Str(parts.ciphertext()),
                Field::Str(parts.auth_tag()),
            );
            let Ok(resealed) = resealed else {
                panic!("the new parts do not decode");
            };
            assert!(
                opens_to(new, &resealed, &plaintext),
                "the new parts do not open with the new key to the same plaintext"
            );
            assert!(
                matches!(old.open_sealed(&resealed), Err(EnvelopeError::DoesNotOpen)),
                "the new parts still open with the old key"
            );
            // Objects holding numbers or nested containers are left to Postgres' serialiser.
            let Some(spliced) = object.with_strings(&parts.fields()) else {
                return;
            };
            let Some(Root::Object(after)) = Root::parse(&spliced) else {
                panic!("a splice does not read back");
            };
            assert_eq!(after.len(), object.len());
            let replaced = parts.fields();
            for ((key, value), (key_after, value_after)) in object.pairs().zip(after.pairs()) {
                assert_eq!(key_after, key, "a key changed");
                match replaced.iter().find(|(name, _)| *name == key.1) {
                    Some((_, part)) => assert_eq!(*value_after, (JENTRY_ISSTRING, *part)),
                    None => {
                        assert_eq!(value_after, value, "a field that was not re-sealed changed")
                    }
                }
            }
            let [algorithm, iv, ciphertext, tag] = fields(&after);
            let Ok(stored) = Sealed::decode(algorithm, iv, ciphertext, tag) else {
                panic!("the rotated envelope does not decode");
            };
            assert!(
                opens_to(new, &stored, &plaintext),
                "the rotated envelope does not open with the new key to the same plaintext"
            );
        }
        Ok(Rotation::Resealed { by, .. }) => panic!("one old key, yet opened by old key {by}"),
        Ok(Rotation::Empty) => panic!("a decoded envelope called empty"),
        Ok(Rotation::AlreadyCurrent) => assert!(
            matches!(under_old, Err(EnvelopeError::DoesNotOpen)) && under_new.is_ok(),
            "called already current: old key {:?}, new key {:?}",
            under_old.err(),
            under_new.err()
        ),
        Err(error) => {
            let expected = match (under_old, under_new) {
                (Ok(_), _) => panic!("the old key opens it, yet the rotation failed: {error:?}"),
                (Err(EnvelopeError::DoesNotOpen), Err(EnvelopeError::DoesNotOpen)) => {
                    EnvelopeError::OpensWithNeitherKey
                }
                (Err(EnvelopeError::DoesNotOpen), Err(other)) => other,
                (Err(EnvelopeError::DoesNotOpen), Ok(_)) => {
                    panic!("the new key opens it, yet the rotation failed: {error:?}")
                }
                (Err(other), _) => other,
            };
            assert_eq!(error, expected);
        }
    }
}

/// Whether `sealed` opens with `cipher` to exactly `plaintext` (compared, never printed).
fn opens_to(cipher: &Cipher, sealed: &Sealed, plaintext: &[u8]) -> bool {
    matches!(cipher.open_sealed(sealed), Ok(opened) if opened[..] == *plaintext)
}
