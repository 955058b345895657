//! Unit tests of the envelope format and cipher against the Node-written vectors; compiled
//! only under `#[cfg(test)]` (see `mod.rs`), so their `unwrap()`s never reach Postgres.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use super::ivpool::{IvPool, IV_POOL_MAX};
use super::*;
use crate::key::Key;

struct Vectors {
    key_a: Key,
    key_b: Key,
    good: Vec<(String, Value)>,
    malformed: Vec<(String, Value)>,
    wrong_key: Value,
}

fn vectors() -> Vectors {
    let raw: Value =
        serde_json::from_str(include_str!("../../../../tests/vectors/envelopes.json")).unwrap();
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
        let err = rotator.rotate(&envelope.to_string()).unwrap_err();
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
    assert_eq!(
        Cipher::new(&v.key_b).status(&text),
        Status::Readable { by: 0 }
    );
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
        rotator.rotate(&envelope.to_json()).unwrap_err(),
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
        let Rotation::Resealed { value: out, by: 0 } = rotator.rotate(&text).unwrap() else {
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
            rotator.rotate(&out.to_json()).unwrap(),
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
        let Rotation::Resealed {
            value: parts,
            by: 0,
        } = rotator.rotate_sealed(under_old.clone()).unwrap()
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
            rotator.rotate_sealed(resealed.clone()),
            Ok(Rotation::AlreadyCurrent)
        ));
        assert!(matches!(
            rotator.dry_run_sealed(under_old.clone()),
            Ok(DryRun::WouldReseal { by: 0 })
        ));
        let key_c = Key::parse("6fYx3zeZFQ1n6rJbJdX6bHvZ9kD0n2o8o5H1lY0GkQ4=").unwrap();
        let stranger = Rotator::new(&v.key_b, &key_c);
        assert!(matches!(
            stranger.rotate_sealed(under_old),
            Err(EnvelopeError::OpensWithNeitherKey)
        ));
    }
    let (not_utf8, _) = Cipher::new(&v.key_a).seal_parts(&[0xff, 0xfe]).unwrap();
    assert!(matches!(
        rotator.rotate_sealed(not_utf8.clone()),
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
        let Rotation::Resealed { value: out, by } = rotator.rotate(&envelope.to_json()).unwrap()
        else {
            panic!("expected a re-seal");
        };
        assert_eq!(by, which);
        assert_eq!(new.open(&out).unwrap().as_slice(), plaintext.as_bytes());
        assert!(matches!(
            rotator.rotate(&out.to_json()),
            Ok(Rotation::AlreadyCurrent)
        ));
        let (sealed, _) = Cipher::new(&olds[which])
            .seal_parts(plaintext.as_bytes())
            .unwrap();
        assert!(matches!(
            rotator.dry_run_sealed(sealed.clone()),
            Ok(DryRun::WouldReseal { by }) if by == which
        ));
        assert_eq!(
            ring.status(Ok(Some(sealed.clone()))),
            Status::Readable { by: which }
        );
        assert_eq!(ring.identify(sealed), Ok(which));
    }
    let stranger = Cipher::new(&Key::generate().unwrap()).seal(b"{}").unwrap();
    assert_eq!(
        rotator.rotate(&stranger.to_json()).unwrap_err(),
        EnvelopeError::OpensWithNoKey
    );
    assert_eq!(
        ring.identify_text(&stranger.to_json()),
        Err(EnvelopeError::DoesNotOpen)
    );
    assert_eq!(ring.identify_text("{}"), Ok(None));
    assert_eq!(ring.identify_text("[]"), Err(EnvelopeError::NotAnObject));
    // A census classifies as a verification does.
    let stranger_sealed = stranger.clone().into_sealed();
    assert_eq!(
        ring.status(Ok(Some(stranger_sealed.clone()))),
        Status::NotReadable
    );
    assert_eq!(ring.status(Ok(None)), Status::Empty);
    assert_eq!(
        ring.status(Err(EnvelopeError::NotAnObject)),
        Status::Malformed(EnvelopeError::NotAnObject)
    );
    assert_eq!(
        Cipher::new(&key_c).status_of(Ok(Some(stranger_sealed))),
        Status::NotReadable
    );
    // The one-key form keeps its message.
    assert_eq!(
        Rotator::new(&v.key_a, &key_d)
            .rotate(&stranger.to_json())
            .unwrap_err(),
        EnvelopeError::OpensWithNeitherKey
    );
    // A plaintext that is not UTF-8 is refused, not re-sealed, by whichever key opens it.
    let not_utf8 = Cipher::new(&key_c).seal(&[0xff, 0xfe]).unwrap();
    assert_eq!(
        rotator.rotate(&not_utf8.to_json()).unwrap_err(),
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
    assert_eq!(
        rotator.dry_run(&text).unwrap(),
        DryRun::WouldReseal { by: 0 }
    );
    assert_eq!(rotator.dry_run("{}").unwrap(), DryRun::Empty);
    let current = Rotator::new(&v.key_b, &v.key_a);
    assert_eq!(current.dry_run(&text).unwrap(), DryRun::AlreadyCurrent);
}

#[test]
fn status_reports_each_kind() {
    let v = vectors();
    let cipher = Cipher::new(&v.key_a);
    assert_eq!(cipher.status("{}"), Status::Empty);
    assert_eq!(
        cipher.status(&v.good[1].1.to_string()),
        Status::Readable { by: 0 }
    );
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
        if let Err(e) = rotator.rotate(&envelope.to_string()) {
            let msg = e.to_string();
            for field in ["iv", "ciphertext", "authTag"] {
                if let Some(s) = envelope.get(field).and_then(Value::as_str) {
                    assert!(!msg.contains(s), "{msg}");
                }
            }
        }
    }
}
