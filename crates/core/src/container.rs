//! The binary layout of a top-level `jsonb` object — PostgreSQL's `JsonbContainer`, the
//! on-disk format since 9.4 (`src/include/utils/jsonb.h`) — read and spliced in plain Rust.
//!
//! A rotation replaces three string values of every envelope. Rebuilding the value through
//! Postgres' `JsonbValue` tree (iterate, push, sort the keys, serialise) cost more than the
//! cryptography; here the stored container is read in place and a copy is written with only
//! those values replaced, every other byte as stored. Bytes are never trusted: every length
//! and offset is checked, and anything that is not a layout this module knows is refused with
//! `None` rather than guessed at. No pgrx types: unit-tested and fuzzed without a server, and
//! checked byte for byte against Postgres' own serialiser by the `#[pg_test]`s.
//!
//! The layout of an object with `n` pairs: a `u32` header (`n | JB_FOBJECT`), `2n` `JEntry`
//! words (the keys, sorted, then their values in the same order), then the keys' bytes and
//! the values' bytes. A `JEntry` holds a type and either the entry's length or, on every
//! `JB_OFFSET_STRIDE`th entry (flagged `JENTRY_HAS_OFF`), the end offset of its data.
//! Numbers and nested containers are padded to 4-byte alignment relative to the start of the
//! datum, so moving them would change their padding: a splice refuses objects holding them.

pub const JB_CMASK: u32 = 0x0FFF_FFFF;
pub const JB_FSCALAR: u32 = 0x1000_0000;
pub const JB_FOBJECT: u32 = 0x2000_0000;
pub const JB_FARRAY: u32 = 0x4000_0000;
pub const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
pub const JENTRY_TYPEMASK: u32 = 0x7000_0000;
pub const JENTRY_HAS_OFF: u32 = 0x8000_0000;
pub const JENTRY_ISSTRING: u32 = 0x0000_0000;
pub const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
pub const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
pub const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
pub const JENTRY_ISNULL: u32 = 0x4000_0000;
pub const JENTRY_ISCONTAINER: u32 = 0x5000_0000;
pub const JB_OFFSET_STRIDE: usize = 32;

const WORD: usize = std::mem::size_of::<u32>();

/// What the root of a stored `jsonb` value is, as far as an envelope cares.
pub enum Root<'a> {
    /// A scalar or an array.
    NotAnObject,
    Object(Object<'a>),
}

/// A validated top-level object: every entry lies within the bytes, in order.
pub struct Object<'a> {
    /// The container, from its header word to the end of its data.
    bytes: &'a [u8],
    pairs: usize,
    /// Every entry in order — the keys, then the values — as its type and its bytes.
    entries: Vec<Entry<'a>>,
}

/// An entry's type (`JENTRY_IS*`) and its bytes.
type Entry<'a> = (u32, &'a [u8]);

/// A value found under a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// The string's bytes, as stored (unescaped).
    String(&'a [u8]),
    /// A number, boolean, null or nested container.
    Other,
}

fn word(bytes: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(WORD)?;
    let raw: [u8; WORD] = bytes.get(at..end)?.try_into().ok()?;
    Some(u32::from_ne_bytes(raw))
}

impl<'a> Root<'a> {
    /// Reads the root container of a `jsonb` datum (the bytes after its 4-byte varlena
    /// header). `None` when the bytes are not a well-formed container.
    pub fn parse(bytes: &'a [u8]) -> Option<Root<'a>> {
        let header = word(bytes, 0)?;
        if header & JB_FOBJECT == 0 {
            return Some(Root::NotAnObject);
        }
        // A root object's header is its pair count and JB_FOBJECT, nothing else.
        if header & !(JB_CMASK | JB_FOBJECT) != 0 {
            return None;
        }
        let pairs = (header & JB_CMASK) as usize;
        let data = pairs.checked_mul(2 * WORD)?.checked_add(WORD)?;
        let (jentries, body) = bytes.split_at_checked(data)?;
        let mut entries: Vec<Entry<'a>> = Vec::with_capacity(pairs * 2);
        let mut end = 0usize;
        for (index, raw) in jentries.get(WORD..)?.chunks_exact(WORD).enumerate() {
            let entry = u32::from_ne_bytes(raw.try_into().ok()?);
            let kind = entry & JENTRY_TYPEMASK;
            if kind > JENTRY_ISCONTAINER || (index < pairs && kind != JENTRY_ISSTRING) {
                return None;
            }
            // Postgres stores an end offset on exactly every JB_OFFSET_STRIDE'th entry.
            let has_offset = entry & JENTRY_HAS_OFF != 0;
            if has_offset != index.is_multiple_of(JB_OFFSET_STRIDE) {
                return None;
            }
            let field = (entry & JENTRY_OFFLENMASK) as usize;
            let start = end;
            end = if has_offset {
                field
            } else {
                end.checked_add(field)?
            };
            let bytes = body.get(start..end)?;
            // Booleans and nulls have no data.
            if matches!(
                kind,
                JENTRY_ISBOOL_FALSE | JENTRY_ISBOOL_TRUE | JENTRY_ISNULL
            ) && !bytes.is_empty()
            {
                return None;
            }
            // Keys are unique and sorted, shorter first, then bytewise.
            if index > 0 && index < pairs {
                let previous = entries.last()?.1;
                if (previous.len(), previous) >= (bytes.len(), bytes) {
                    return None;
                }
            }
            entries.push((kind, bytes));
        }
        // The data ends exactly where the datum does.
        (end == body.len()).then_some(Root::Object(Object {
            bytes,
            pairs,
            entries,
        }))
    }
}

impl<'a> Object<'a> {
    pub fn len(&self) -> usize {
        self.pairs
    }

    pub fn is_empty(&self) -> bool {
        self.pairs == 0
    }

    /// The keys and values side by side, each as its type and bytes.
    pub fn pairs(&self) -> impl Iterator<Item = (&Entry<'a>, &Entry<'a>)> + '_ {
        let (keys, values) = self.entries.split_at(self.pairs.min(self.entries.len()));
        keys.iter().zip(values)
    }

    /// The values stored under each of `names`.
    pub fn get<const N: usize>(&self, names: [&[u8]; N]) -> [Option<Value<'a>>; N] {
        let mut found = [None; N];
        for (&(_, key), &(kind, bytes)) in self.pairs() {
            if let Some(i) = names.iter().position(|name| *name == key) {
                found[i] = Some(if kind == JENTRY_ISSTRING {
                    Value::String(bytes)
                } else {
                    Value::Other
                });
            }
        }
        found
    }

    /// The size of the container `write_with_strings` writes: `None` when the object holds a
    /// number or a nested container (whose alignment padding depends on where it lands), or
    /// when the result would exceed a `JEntry`'s range; the caller then rebuilds the value
    /// with Postgres' own functions.
    pub fn with_strings_len(&self, replacements: &[(&[u8], &[u8])]) -> Option<usize> {
        let mut data_len = 0usize;
        for (&(_, key), &(kind, stored)) in self.pairs() {
            if kind == JENTRY_ISNUMERIC || kind == JENTRY_ISCONTAINER {
                return None;
            }
            let value = replacement(replacements, key).unwrap_or(stored);
            data_len = data_len.checked_add(key.len())?.checked_add(value.len())?;
        }
        // Postgres refuses (54000) a container larger than a JEntry can describe; so does this,
        // leaving the value to Postgres' own serialiser to refuse.
        let total = data_len.checked_add(WORD.checked_add(self.pairs.checked_mul(2 * WORD)?)?)?;
        (total <= JENTRY_OFFLENMASK as usize).then_some(total)
    }

    /// Writes into `out` (exactly `with_strings_len` bytes) a copy of the whole container,
    /// without a varlena header, in which the value of each key named in `replacements` is the
    /// given string and every other key and value is as stored. `None`, with `out` partly
    /// written, if `out` is not exactly that size.
    pub fn write_with_strings(
        &self,
        replacements: &[(&[u8], &[u8])],
        out: &mut [u8],
    ) -> Option<()> {
        let out_len = out.len();
        let keys_entries = WORD.checked_add(self.pairs.checked_mul(WORD)?)?;
        let data = keys_entries.checked_add(self.pairs.checked_mul(WORD)?)?;
        let (head, body) = out.split_at_mut_checked(data)?;
        // The header and the keys' entries are unchanged.
        let (head, mut value_entries) = head.split_at_mut_checked(keys_entries)?;
        head.copy_from_slice(self.bytes.get(..keys_entries)?);
        let keys_len: usize = self.pairs().map(|(&(_, key), _)| key.len()).sum();
        let (keys, mut values) = body.split_at_mut_checked(keys_len)?;
        keys.copy_from_slice(self.bytes.get(data..data.checked_add(keys_len)?)?);
        let mut end = keys_len;
        for (i, (&(_, key), &(kind, stored))) in self.pairs().enumerate() {
            let (kind, value) = match replacement(replacements, key) {
                Some(new) => (JENTRY_ISSTRING, new),
                None => (kind, stored),
            };
            end = end.checked_add(value.len())?;
            let field = if (self.pairs + i).is_multiple_of(JB_OFFSET_STRIDE) {
                end as u32 | JENTRY_HAS_OFF
            } else {
                value.len() as u32
            };
            let (entry, rest) = value_entries.split_at_mut_checked(WORD)?;
            entry.copy_from_slice(&(kind | field).to_ne_bytes());
            value_entries = rest;
            let (slot, rest) = values.split_at_mut_checked(value.len())?;
            slot.copy_from_slice(value);
            values = rest;
        }
        (values.is_empty() && out_len <= JENTRY_OFFLENMASK as usize).then_some(())
    }

    /// `write_with_strings` into a new vector.
    pub fn with_strings(&self, replacements: &[(&[u8], &[u8])]) -> Option<Vec<u8>> {
        let mut out = vec![0; self.with_strings_len(replacements)?];
        self.write_with_strings(replacements, &mut out)?;
        Some(out)
    }
}

fn replacement<'r>(replacements: &[(&[u8], &'r [u8])], key: &[u8]) -> Option<&'r [u8]> {
    replacements
        .iter()
        .find(|(name, _)| *name == key)
        .map(|(_, new)| *new)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A container written the way Postgres' convertJsonbObject writes one, for objects of
    /// strings, booleans and nulls (no alignment padding). Keys must be given sorted in
    /// jsonb order (shorter first, then bytewise).
    pub(crate) fn container(pairs: &[(&str, Option<&str>)]) -> Vec<u8> {
        let n = pairs.len();
        let mut out = (n as u32 | JB_FOBJECT).to_ne_bytes().to_vec();
        let mut data = Vec::new();
        let items = pairs
            .iter()
            .map(|(k, _)| (JENTRY_ISSTRING, k.as_bytes()))
            .chain(pairs.iter().map(|(_, v)| match v {
                Some(s) => (JENTRY_ISSTRING, s.as_bytes()),
                None => (JENTRY_ISNULL, &b""[..]),
            }));
        for (index, (kind, bytes)) in items.enumerate() {
            data.extend_from_slice(bytes);
            let field = if index.is_multiple_of(JB_OFFSET_STRIDE) {
                data.len() as u32 | JENTRY_HAS_OFF
            } else {
                bytes.len() as u32
            };
            out.extend_from_slice(&(kind | field).to_ne_bytes());
        }
        out.extend_from_slice(&data);
        out
    }

    fn object(bytes: &[u8]) -> Object<'_> {
        match Root::parse(bytes) {
            Some(Root::Object(object)) => object,
            _ => panic!("not an object"),
        }
    }

    const ENVELOPE: [(&str, Option<&str>); 5] = [
        ("iv", Some("AAAAAAAAAAAAAAAA")),
        ("keyId", Some("v1")),
        ("authTag", Some("BBBBBBBBBBBBBBBBBBBBBB==")),
        ("algorithm", Some("aes-256-gcm")),
        ("ciphertext", Some("Q0NDQ0ND")),
    ];

    #[test]
    fn finds_strings_and_reports_other_values() {
        let bytes = container(&[("a", Some("x")), ("bb", None), ("ccc", Some(""))]);
        let o = object(&bytes);
        assert_eq!(o.len(), 3);
        assert_eq!(o.get([b"a"])[0], Some(Value::String(b"x")));
        assert_eq!(o.get([b"bb"])[0], Some(Value::Other));
        assert_eq!(o.get([b"ccc"])[0], Some(Value::String(b"")));
        assert_eq!(o.get([b"d"])[0], None);
    }

    #[test]
    fn replacing_strings_gives_what_a_fresh_serialisation_gives() {
        let bytes = container(&ENVELOPE);
        let spliced = object(&bytes)
            .with_strings(&[
                (b"iv", b"ZZZZ"),
                (b"ciphertext", b"a much longer value than before"),
            ])
            .expect("splice");
        let mut expected = ENVELOPE;
        expected[0].1 = Some("ZZZZ");
        expected[4].1 = Some("a much longer value than before");
        assert_eq!(spliced, container(&expected));
        assert_eq!(
            object(&spliced).get([b"keyId"]),
            [Some(Value::String(b"v1"))]
        );
    }

    #[test]
    fn offsets_are_rewritten_on_every_stride_entry() {
        // 40 pairs: entries 0, 32 and 64 store end offsets instead of lengths.
        let names: Vec<String> = (0..40).map(|i| format!("k{i:02}")).collect();
        let pairs: Vec<(&str, Option<&str>)> =
            names.iter().map(|n| (n.as_str(), Some("value"))).collect();
        let bytes = container(&pairs);
        let spliced = object(&bytes)
            .with_strings(&[(b"k00", b"a"), (b"k30", b"longer value")])
            .expect("splice");
        let mut expected = pairs.clone();
        expected[0].1 = Some("a");
        expected[30].1 = Some("longer value");
        assert_eq!(spliced, container(&expected));
        let o = object(&spliced);
        assert_eq!(o.get([b"k39"])[0], Some(Value::String(b"value")));
        assert_eq!(o.get([b"k30"])[0], Some(Value::String(b"longer value")));
    }

    #[test]
    fn empty_objects_arrays_and_scalars() {
        let empty = container(&[]);
        assert!(object(&empty).is_empty());
        let array = (1u32 | JB_FARRAY).to_ne_bytes();
        assert!(matches!(Root::parse(&array), Some(Root::NotAnObject)));
    }

    #[test]
    fn numbers_and_nested_containers_are_left_to_postgres() {
        let mut bytes = container(&[("a", Some("x"))]);
        // Retype the value as a nested container of the same length: a splice refuses it.
        let at = 2 * WORD;
        let entry = word(&bytes, at).expect("entry");
        bytes[at..at + WORD].copy_from_slice(&(entry | JENTRY_ISCONTAINER).to_ne_bytes());
        let o = object(&bytes);
        assert_eq!(o.get([b"a"])[0], Some(Value::Other));
        assert!(o.with_strings(&[(b"a", b"y")]).is_none());
    }

    #[test]
    fn damaged_bytes_are_refused_not_trusted() {
        let bytes = container(&ENVELOPE);
        // Every truncation, and a trailing byte, is refused.
        for len in 0..bytes.len() {
            assert!(
                !matches!(Root::parse(&bytes[..len]), Some(Root::Object(_))),
                "truncated to {len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Root::parse(&longer).is_none());
        // A length that runs past the end, a key that is not a string, an unknown type.
        for (at, value) in [
            (WORD, 0x0FFF_FFFF | JENTRY_HAS_OFF),
            (WORD, JENTRY_ISNULL | 2),
            (6 * WORD, 0x6000_0000 | 2),
        ] {
            let mut bad = bytes.clone();
            bad[at..at + WORD].copy_from_slice(&value.to_ne_bytes());
            assert!(Root::parse(&bad).is_none(), "entry at {at} = {value:#x}");
        }
        // An offset where a length belongs; keys out of order; a null with data.
        let mut bad = bytes.clone();
        let second = word(&bad, 2 * WORD).expect("entry");
        bad[2 * WORD..3 * WORD].copy_from_slice(&(second | JENTRY_HAS_OFF).to_ne_bytes());
        assert!(Root::parse(&bad).is_none(), "offset off the stride");
        let unsorted = container(&[("b", Some("x")), ("a", Some("y"))]);
        assert!(Root::parse(&unsorted).is_none(), "unsorted keys");
        let duplicate = container(&[("a", Some("x")), ("a", Some("y"))]);
        assert!(Root::parse(&duplicate).is_none(), "duplicate keys");
        let mut null_with_data = container(&[("a", None), ("bb", Some("x"))]);
        let at = 3 * WORD; // the first value's entry: a null, given the length of one byte
        null_with_data[at..at + WORD].copy_from_slice(&(JENTRY_ISNULL | 1).to_ne_bytes());
        let at = 4 * WORD; // and the string after it one byte shorter, so the sizes still add up
        null_with_data[at..at + WORD].copy_from_slice(&(JENTRY_ISSTRING).to_ne_bytes());
        assert!(Root::parse(&null_with_data).is_none(), "null with data");
        // A pair count far beyond the bytes.
        let mut bad = bytes.clone();
        bad[..WORD].copy_from_slice(&(JB_CMASK | JB_FOBJECT).to_ne_bytes());
        assert!(Root::parse(&bad).is_none());
    }
}
