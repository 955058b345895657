//! Any bytes as a stored jsonb container: the layout reader must refuse what does not check
//! out rather than read past it, and whatever it splices must read back with exactly the
//! replaced strings and every other entry byte for byte as it was.
#![no_main]

use credential_rotate_core::container::{
    Root, Value, JENTRY_ISCONTAINER, JENTRY_ISNUMERIC, JENTRY_ISSTRING,
};
use libfuzzer_sys::fuzz_target;

/// What a rotation replaces.
const PARTS: [&[u8]; 3] = [b"iv", b"ciphertext", b"authTag"];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the replacements' lengths, so splices both grow and shrink values,
    // down to empty strings.
    let Some((&shape, bytes)) = data.split_first() else {
        return;
    };
    let Some(Root::Object(object)) = Root::parse(bytes) else {
        return;
    };
    let iv = vec![b'I'; usize::from(shape & 0x0F)];
    let ciphertext = vec![b'C'; usize::from(shape) * 3];
    let tag = vec![b'T'; usize::from(shape >> 4)];
    let replacements: [(&[u8], &[u8]); 3] =
        [(PARTS[0], &iv), (PARTS[1], &ciphertext), (PARTS[2], &tag)];
    let Some(spliced) = object.with_strings(&replacements) else {
        // The only refusal an input this small can meet: a value whose alignment padding
        // would depend on where it lands.
        assert!(
            object
                .pairs()
                .any(|(_, &(kind, _))| kind == JENTRY_ISNUMERIC || kind == JENTRY_ISCONTAINER),
            "a splice of strings, booleans and nulls was refused"
        );
        return;
    };
    assert_eq!(Some(spliced.len()), object.with_strings_len(&replacements));
    let Some(Root::Object(after)) = Root::parse(&spliced) else {
        panic!("a splice does not read back");
    };
    assert_eq!(after.len(), object.len());
    for ((key, value), (key_after, value_after)) in object.pairs().zip(after.pairs()) {
        assert_eq!(key_after, key, "a key changed");
        match replacements.iter().find(|(name, _)| *name == key.1) {
            Some((_, new)) => assert_eq!(*value_after, (JENTRY_ISSTRING, *new)),
            None => assert_eq!(value_after, value, "a value that was not replaced changed"),
        }
    }
    let found = after.get(PARTS);
    for ((name, new), now) in replacements.iter().zip(found) {
        let stored = object.get([*name])[0];
        assert_eq!(now, stored.map(|_| Value::String(new)), "{name:?}");
    }
    // Splicing the stored strings back gives the stored container, every byte of it: the
    // JEntry words (lengths, and offsets on the stride) are rewritten exactly as Postgres
    // wrote them.
    let stored = object.get(PARTS);
    let mut back: Vec<(&[u8], &[u8])> = Vec::new();
    for (name, value) in PARTS.into_iter().zip(stored) {
        match value {
            Some(Value::String(s)) => back.push((name, s)),
            None => {}
            // A boolean or null replaced by a string cannot be put back as one.
            Some(Value::Other) => return,
        }
    }
    assert_eq!(
        after.with_strings(&back).as_deref(),
        Some(bytes),
        "splicing the stored values back does not give the stored bytes"
    );
});
