//! The runbook's environment and key files, read into keys of the shared core.
//!
//! Keys come from the environment or from files, never from the command line (process lists
//! show arguments). They are parsed by the core exactly as the extension and the application
//! parse them, and named in messages by where they came from and their position, never by
//! their text.

use std::path::Path;

use credential_rotate_core::key::Key;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const ENV_URL: &str = "DATABASE_URL";
pub const ENV_URL_ALT: &str = "FREEBOARD_POSTGRES_URL";
pub const ENV_OLD: &str = "CREDENTIAL_ENCRYPTION_KEY_OLD";
pub const ENV_NEW: &str = "CREDENTIAL_ENCRYPTION_KEY_NEW";
pub const ENV_CURRENT: &str = "CREDENTIAL_ENCRYPTION_KEY";

/// An environment variable's value, wiped when dropped; `None` when unset or empty.
fn env(name: &str) -> Option<Zeroizing<String>> {
    std::env::var(name)
        .ok()
        .map(Zeroizing::new)
        .filter(|v| !v.is_empty())
}

/// The connection string and the variable it came from: DATABASE_URL, else
/// FREEBOARD_POSTGRES_URL, as the migration script reads them.
pub fn database_url() -> Result<(Zeroizing<String>, &'static str)> {
    if let Some(url) = env(ENV_URL) {
        return Ok((url, ENV_URL));
    }
    env(ENV_URL_ALT)
        .map(|url| (url, ENV_URL_ALT))
        .ok_or(Error::MissingEnv(
            "DATABASE_URL (or FREEBOARD_POSTGRES_URL)",
        ))
}

/// Where a list of keys came from, for messages: `CREDENTIAL_ENCRYPTION_KEY_OLD[2]`.
struct Source(String);

/// Several keys separated by commas (a comma is not in the base64 alphabet), as the migration
/// script reads CREDENTIAL_ENCRYPTION_KEY_OLD. An empty entry is refused by its position.
fn parse_list(text: &str, source: &Source) -> Result<Vec<Key>> {
    text.split(',')
        .enumerate()
        .map(|(i, part)| {
            Key::parse(part).map_err(|reason| Error::InvalidKey {
                what: format!("{}[{}]", source.0, i + 1),
                reason,
            })
        })
        .collect()
}

/// Reads a key file (a secret store's mounted file): one key, or several separated by commas.
fn read_key_file(path: &Path) -> Result<Zeroizing<String>> {
    let shown = path.display().to_string();
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| Error::KeyFile {
        path: shown.clone(),
        reason: e.kind().to_string(),
    })?);
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(_) => Err(Error::KeyFile {
            path: shown,
            reason: "it is not UTF-8 text".into(),
        }),
    }
}

/// Keys from files if any were given, else from the environment variable `var`; `None` when
/// neither is there.
fn keys_from(files: &[std::path::PathBuf], var: &'static str) -> Result<Option<Vec<Key>>> {
    if !files.is_empty() {
        let mut keys = Vec::new();
        for path in files {
            let text = read_key_file(path)?;
            keys.extend(parse_list(&text, &Source(path.display().to_string()))?);
        }
        return Ok(Some(keys));
    }
    env(var)
        .map(|text| parse_list(&text, &Source(var.to_owned())))
        .transpose()
}

/// The keys of a rotation: one or more old keys and the new one, distinct.
pub struct RotationKeys {
    pub old: Vec<Key>,
    pub new: Key,
}

pub fn rotation_keys(
    old_files: &[std::path::PathBuf],
    new_file: Option<&Path>,
) -> Result<RotationKeys> {
    let old = keys_from(old_files, ENV_OLD)?.ok_or(Error::MissingEnv(
        "CREDENTIAL_ENCRYPTION_KEY_OLD (or --old-key-file)",
    ))?;
    let new_files: Vec<std::path::PathBuf> = new_file.map(Path::to_path_buf).into_iter().collect();
    let mut new = keys_from(&new_files, ENV_NEW)?.ok_or(Error::MissingEnv(
        "CREDENTIAL_ENCRYPTION_KEY_NEW (or --new-key-file)",
    ))?;
    if new.len() != 1 {
        return Err(Error::Usage(format!(
            "the new key must be one key, not {}",
            new.len()
        )));
    }
    let new = new.remove(0);
    for (i, key) in old.iter().enumerate() {
        if *key == new {
            return Err(Error::SameKeys(if old.len() == 1 {
                "the old and the new key are the same key".into()
            } else {
                format!("the new key is the same key as old key {}", i + 1)
            }));
        }
        if let Some(j) = old[..i].iter().position(|k| k == key) {
            return Err(Error::SameKeys(format!(
                "old key {} is the same key as old key {}",
                i + 1,
                j + 1
            )));
        }
    }
    Ok(RotationKeys { old, new })
}

/// The key `verify` checks against: --key-file, else CREDENTIAL_ENCRYPTION_KEY, else the new
/// key of the rotation (--new-key-file or CREDENTIAL_ENCRYPTION_KEY_NEW).
pub fn verify_key(key_file: Option<&Path>, new_file: Option<&Path>) -> Result<Key> {
    let one = |file: Option<&Path>, var: &'static str| -> Result<Option<Key>> {
        let files: Vec<std::path::PathBuf> = file.map(Path::to_path_buf).into_iter().collect();
        match keys_from(&files, var)? {
            None => Ok(None),
            Some(mut keys) if keys.len() == 1 => Ok(Some(keys.remove(0))),
            Some(keys) => Err(Error::Usage(format!(
                "verify checks one key, not {}",
                keys.len()
            ))),
        }
    };
    if let Some(key) = one(key_file, ENV_CURRENT)? {
        return Ok(key);
    }
    one(new_file, ENV_NEW)?.ok_or(Error::MissingEnv(
        "CREDENTIAL_ENCRYPTION_KEY (or CREDENTIAL_ENCRYPTION_KEY_NEW, --key-file)",
    ))
}

/// The keys a census counts rows by: every key given (--key-file, the old keys, the new key
/// and CREDENTIAL_ENCRYPTION_KEY, from files or the environment), each once, in that order.
pub fn census_keys(
    key_files: &[std::path::PathBuf],
    old_files: &[std::path::PathBuf],
    new_file: Option<&Path>,
) -> Result<Vec<Key>> {
    let new_files: Vec<std::path::PathBuf> = new_file.map(Path::to_path_buf).into_iter().collect();
    let mut keys: Vec<Key> = Vec::new();
    let sources = [
        keys_from(key_files, ENV_CURRENT)?,
        keys_from(old_files, ENV_OLD)?,
        keys_from(&new_files, ENV_NEW)?,
    ];
    for key in sources.into_iter().flatten().flatten() {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(Error::MissingEnv(
            "CREDENTIAL_ENCRYPTION_KEY, CREDENTIAL_ENCRYPTION_KEY_OLD or CREDENTIAL_ENCRYPTION_KEY_NEW (or --key-file)",
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q=";
    const KEY_B: &str = "PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc=";

    #[test]
    fn lists_split_on_commas_and_name_a_bad_entry_by_position() {
        let source = Source("X".into());
        let keys = parse_list(&format!(" {KEY_A} ,\n{KEY_B}\n"), &source).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].fingerprint(), "8d3197a7dd0e26e7");
        let err = parse_list(&format!("{KEY_A},,{KEY_B}"), &source).unwrap_err();
        assert_eq!(err.to_string(), "X[2] is not a valid key: it is empty");
        let err = parse_list(&KEY_A[..40], &source).unwrap_err().to_string();
        assert!(err.starts_with("X[1] is not a valid key"), "{err}");
        assert!(!err.contains(&KEY_A[..8]), "{err}");
    }

    #[test]
    fn a_missing_key_file_is_named_without_its_content() {
        let err = read_key_file(Path::new("/nonexistent/key")).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        assert!(err.to_string().contains("/nonexistent/key"), "{err}");
    }
}
