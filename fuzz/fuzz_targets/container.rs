//! Any bytes as a stored jsonb container: the layout reader must refuse what does not check
//! out rather than read past it, and whatever it splices must read back with exactly the
//! replaced strings and every other value as it was.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/container.rs"]
mod container;

use container::{Root, Value};
use libfuzzer_sys::fuzz_target;

const NAMES: [&[u8]; 4] = [b"algorithm", b"iv", b"ciphertext", b"authTag"];

fuzz_target!(|data: &[u8]| {
    // The first byte picks replacement lengths, so splices both grow and shrink values.
    let Some((&shape, bytes)) = data.split_first() else {
        return;
    };
    let Some(Root::Object(object)) = Root::parse(bytes) else {
        return;
    };
    let before = object.get(NAMES);
    let long = vec![b'A'; usize::from(shape) * 3];
    let replacements: [(&[u8], &[u8]); 2] = [(b"iv", b"QUJD"), (b"ciphertext", &long)];
    let Some(spliced) = object.with_strings(&replacements) else {
        return;
    };
    let Some(Root::Object(after)) = Root::parse(&spliced) else {
        panic!("a splice does not read back");
    };
    assert_eq!(after.len(), object.len());
    let found = after.get(NAMES);
    for ((name, was), now) in NAMES.iter().zip(before).zip(found) {
        match replacements.iter().find(|(n, _)| n == name) {
            Some((_, new)) if was.is_some() => assert_eq!(now, Some(Value::String(new))),
            _ => assert_eq!(now, was),
        }
    }
});
