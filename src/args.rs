//! The key arguments of the SQL functions, as core [`Key`]s: parsed as the application reads
//! them, refused with the argument (and position) named and never the key, and a rotation's
//! pair checked for the same key, once for every function that takes one.

use zeroize::Zeroizing;

use crate::encoding::DbText;
use crate::error::{required, Error};
use crate::key::{Key, KeyError};

/// A key as the application reads it: UTF-8 text. Taken as `DbText` and converted from the
/// database encoding, since pgrx's `&str` would refuse (or, in arrays, not check) the bytes of
/// a non-UTF-8 database. A key that does not convert is not base64 either.
fn parse_key_text(text: &DbText) -> Result<Key, KeyError> {
    // Every key argument passes here: its text is masked wherever the statement shows it.
    crate::hygiene::saw_key(text.bytes());
    let utf8 = text.to_utf8("a key").map_err(|_| KeyError::NotBase64)?;
    let utf8 = Zeroizing::new(utf8.into_owned());
    Key::parse(&utf8)
}

/// Parses a key argument, naming the argument (never its value) when it is refused.
pub fn key(arg: &'static str, text: Option<&DbText>) -> Result<Key, Error> {
    let text = text.ok_or(Error::InvalidKey {
        arg,
        reason: KeyError::Null,
    })?;
    parse_key_text(text).map_err(|reason| Error::InvalidKey { arg, reason })
}

/// The old and new key of a one-key rotation: two valid keys, not the same one (however
/// spelt).
pub fn one_old(old_key: Option<&DbText>, new_key: Option<&DbText>) -> Result<(Key, Key), Error> {
    let old = key("old_key", old_key)?;
    let new = key("new_key", new_key)?;
    if old == new {
        return Err(Error::SameKey);
    }
    Ok((old, new))
}

/// Parses an array of keys: at least one, none NULL, none twice (the same 32 bytes, however
/// spelt). A refusal names the argument and the position, from 1, never a key.
pub fn key_list(
    arg: &'static str,
    texts: impl IntoIterator<Item = Option<DbText>>,
) -> Result<Vec<Key>, Error> {
    let mut keys: Vec<Key> = Vec::new();
    for (i, text) in texts.into_iter().enumerate() {
        let position = i + 1;
        let at = |reason| Error::InvalidKeyAt {
            arg,
            position,
            reason,
        };
        let key = parse_key_text(&text.ok_or(at(KeyError::Null))?).map_err(at)?;
        if let Some(first) = keys.iter().position(|k| *k == key) {
            return Err(Error::DuplicateKey {
                arg,
                first: first + 1,
                second: position,
            });
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(Error::NoKeys(arg));
    }
    Ok(keys)
}

/// The keys of a rotation from several old keys: `old_keys` as [`key_list`] checks them,
/// and a `new_key` that is none of them.
pub fn several_old(
    old_keys: Option<impl IntoIterator<Item = Option<DbText>>>,
    new_key: Option<&DbText>,
) -> Result<(Vec<Key>, Key), Error> {
    let old = key_list("old_keys", required(old_keys, "old_keys")?)?;
    let new = key("new_key", new_key)?;
    if let Some(i) = old.iter().position(|k| *k == new) {
        return Err(Error::NewKeyAmongOld { position: i + 1 });
    }
    Ok((old, new))
}
