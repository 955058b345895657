//! Reading without changing: `credential_verify` and `credential_verify_rows` (how the
//! secrets fare against one key), `credential_key_census` (which of several keys opens each
//! secret), and their per-row helpers.
//!
//! Like a rotation, each is one scan whose per-row helper finds the key(s) in the backend's
//! active call ([`crate::call`]), never in the statement text. The helpers read a jsonb column
//! in its binary form and any other as text; both readings classify a value the same way
//! ([`Status`]).

use std::rc::Rc;

use pgrx::datum::Array;
use pgrx::prelude::*;

use crate::args;
use crate::call::{self, Counting, Statuses, Verifying, Work};
use crate::encoding::{self, DbText, GetText};
use crate::envelope::{Cipher, EnvelopeError, KeyRing, Sealed, Secret, Status};
use crate::error::{required, Error, OrReport};
use crate::hygiene;
use crate::jsonb::RawJsonb;
use crate::key::Key;
use crate::target::{self, Lock, Target};

/// Counts how the secrets of the target column fare against `key`. Changes nothing.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn credential_verify(
    key: Option<DbText>,
    target_table: default!(Option<DbText>, "'credential_profiles'"),
    secret_column: default!(Option<DbText>, "'secret'"),
) -> TableIterator<
    'static,
    (
        name!(readable, i64),
        name!(not_readable, i64),
        name!(empty, i64),
        name!(malformed, i64),
    ),
> {
    let c = verification(
        key,
        target_table,
        secret_column,
        |client, target, cipher| statuses(client, &target, cipher),
    );
    TableIterator::once((c.readable, c.not_readable, c.empty, c.malformed))
}

/// Lists the rows whose secret does not open with `key`: primary key and reason, never secret
/// material. For diagnosis before or after a rotation.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn credential_verify_rows(
    key: Option<DbText>,
    target_table: default!(Option<DbText>, "'credential_profiles'"),
    secret_column: default!(Option<DbText>, "'secret'"),
) -> TableIterator<'static, (name!(primary_key, DbText), name!(reason, DbText))> {
    let rows = verification(
        key,
        target_table,
        secret_column,
        |client, target, cipher| {
            let work = Work::Verify(Verifying {
                cipher,
                statuses: Statuses::default(),
            });
            let _guard = call::install(work, Rc::clone(&target))?;
            let table =
                client.select(&encoding::sql(&target.verify_rows_statement())?, None, &[])?;
            let mut rows = Vec::new();
            for row in table {
                let pk = row.get_text(1)?.unwrap_or_default();
                let reason = row.get_text(2)?.unwrap_or_default();
                rows.push((format!("{}=({pk})", target.pk_columns), reason));
            }
            Ok(rows)
        },
    );
    // Each row's text is made when the row is returned: the SPI memory it was read in is gone,
    // and a value made now would not outlive this first call of the set-returning function.
    TableIterator::new(rows.into_iter().map(|(pk, reason)| {
        (
            DbText::from_utf8(&pk, "a primary key").or_report(),
            DbText::from_utf8(&reason, "a reason").or_report(),
        )
    }))
}

/// The steps every verification starts with: the key parsed (and wiped once its cipher is
/// built), the table resolved and the call confined ([`crate::target::Confined`]) for `body`.
fn verification<R>(
    key: Option<DbText>,
    target_table: Option<DbText>,
    secret_column: Option<DbText>,
    body: impl FnOnce(&mut pgrx::spi::SpiClient<'_>, Rc<Target>, Rc<Cipher>) -> Result<R, Error>,
) -> R {
    hygiene::mark_statement();
    (|| {
        let key = args::key("key", key.as_ref())?;
        let (table, column) = target::names(target_table, secret_column)?;
        let cipher = Rc::new(Cipher::new(&key));
        drop(key);
        Spi::connect_mut(|client| {
            let (target, _confined) = Target::resolve(client, &table, &column, Lock::AccessShare)?;
            body(client, Rc::new(target), cipher)
        })
    })()
    .or_report()
}

/// How the rows of `target` fare against `cipher`: one scan, counted by the per-row helper.
pub fn statuses(
    client: &mut pgrx::spi::SpiClient<'_>,
    target: &Rc<Target>,
    cipher: Rc<Cipher>,
) -> Result<Statuses, Error> {
    let work = Work::Verify(Verifying {
        cipher,
        statuses: Statuses::default(),
    });
    let guard = call::install(work, Rc::clone(target))?;
    client.select(
        &encoding::sql(&target.verify_counts_statement())?,
        Some(1),
        &[],
    )?;
    guard.read(|work| match work {
        Work::Verify(v) => Ok(v.statuses),
        Work::Rotate(_) | Work::Census(_) => Err(Error::Internal("not a verification".into())),
    })?
}

/// A stored secret read as text: `None` for SQL NULL or `{}`.
fn read_text(secret: Option<DbText>) -> Result<Option<Sealed>, EnvelopeError> {
    let Some(secret) = secret else {
        return Ok(None);
    };
    let text = secret
        .to_utf8("the envelope")
        .map_err(|_| EnvelopeError::NotJson)?;
    Secret::parse_sealed(&text)
}

/// A stored secret read from its binary jsonb: `None` for SQL NULL or `{}`.
fn read_jsonb(secret: Option<RawJsonb>) -> Result<Option<Sealed>, EnvelopeError> {
    // SAFETY: every RawJsonb argument is declared jsonb.
    secret.map_or(Ok(None), |secret| unsafe { secret.sealed() })
}

/// Classifies and counts one row under the active verification's key, with no borrow of the
/// call state live while `status` runs (reading the value may call Postgres). `None` when the
/// row opens or is empty, else why not: `not_readable` or the reason it is malformed.
fn with_verify_cipher(
    helper: &'static str,
    status: impl FnOnce(&Cipher) -> Status,
) -> Option<String> {
    let cipher = call::with_verification(helper, |v| Ok(Rc::clone(&v.cipher))).or_report();
    let status = status(&cipher);
    drop(cipher);
    call::with_verification(helper, |v| {
        let c = &mut v.statuses;
        Ok(match status {
            Status::Empty => {
                c.empty += 1;
                None
            }
            Status::Readable { .. } => {
                c.readable += 1;
                None
            }
            Status::NotReadable => {
                c.not_readable += 1;
                Some("the envelope does not open with the key".to_owned())
            }
            Status::Malformed(reason) => {
                c.malformed += 1;
                Some(reason.to_string())
            }
        })
    })
    .or_report()
}

/// Per-row helper of `credential_verify` and `credential_verify_rows`: counts the row under the
/// active key; `NULL` when it opens or is empty, else why it does not.
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    schema = "credential_rotate"
)]
fn _credential_status(secret: Option<DbText>) -> Option<String> {
    with_verify_cipher("_credential_status", |cipher| {
        cipher.status_of(read_text(secret))
    })
}

/// As `_credential_status`, for a jsonb value read in its binary form.
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    schema = "credential_rotate"
)]
fn _credential_status_jsonb(secret: Option<RawJsonb>) -> Option<String> {
    with_verify_cipher("_credential_status_jsonb", |cipher| {
        cipher.status_of(read_jsonb(secret))
    })
}

/// Counts the rows of the target column that open with each of `keys`, in one scan: a
/// `readable` row per key in the order given, then `not_readable`, `empty` and `malformed`
/// (every row present, even at 0). Changes nothing; reads what `credential_verify` reads.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn credential_key_census<'a>(
    keys: Option<Array<'a, DbText>>,
    target_table: default!(Option<DbText>, "'credential_profiles'"),
    secret_column: default!(Option<DbText>, "'secret'"),
) -> TableIterator<
    'static,
    (
        name!(key_fingerprint, Option<String>),
        name!(status, String),
        name!(rows, i64),
    ),
> {
    hygiene::mark_statement();
    let rows = (|| {
        let keys = args::key_list("keys", required(keys, "keys")?.iter())?;
        let (table, column) = target::names(target_table, secret_column)?;
        let fingerprints: Vec<String> = keys.iter().map(Key::fingerprint).collect();
        let ring = Rc::new(KeyRing::new(&keys));
        drop(keys);
        Spi::connect_mut(|client| -> Result<_, Error> {
            let (target, _confined) = Target::resolve(client, &table, &column, Lock::AccessShare)?;
            let target = Rc::new(target);
            let work = Work::Census(Counting {
                opened_by: vec![0; ring.len()],
                keys: ring,
                statuses: Statuses::default(),
            });
            let guard = call::install(work, Rc::clone(&target))?;
            client.select(&encoding::sql(&target.census_statement())?, Some(1), &[])?;
            let (counts, opened_by) = guard.read(|work| match work {
                Work::Census(c) => Ok((c.statuses, c.opened_by.clone())),
                Work::Rotate(_) | Work::Verify(_) => Err(Error::Internal("not a census".into())),
            })??;
            drop(guard);
            let mut rows: Vec<(Option<String>, String, i64)> = fingerprints
                .into_iter()
                .zip(opened_by)
                .map(|(fingerprint, n)| (Some(fingerprint), "readable".to_owned(), n))
                .collect();
            for (status, n) in [
                ("not_readable", counts.not_readable),
                ("empty", counts.empty),
                ("malformed", counts.malformed),
            ] {
                rows.push((None, status.to_owned(), n));
            }
            Ok(rows)
        })
    })()
    .or_report();
    TableIterator::new(rows)
}

/// Counts one row of the active census under the key that opens it, with no borrow of the call
/// state live while `status` runs (reading the value may call Postgres). Returns the key's
/// position in `keys`, from 1; 0 when none opens it, or it is empty or malformed.
fn census_row(helper: &'static str, status: impl FnOnce(&KeyRing) -> Status) -> i32 {
    let keys = call::with_census(helper, |c| Ok(Rc::clone(&c.keys))).or_report();
    let status = status(&keys);
    drop(keys);
    call::with_census(helper, |c| {
        Ok(match status {
            Status::Empty => {
                c.statuses.empty += 1;
                0
            }
            Status::Readable { by } => {
                if let Some(opened) = c.opened_by.get_mut(by) {
                    *opened += 1;
                }
                i32::try_from(by + 1).unwrap_or(i32::MAX)
            }
            Status::NotReadable => {
                c.statuses.not_readable += 1;
                0
            }
            Status::Malformed(_) => {
                c.statuses.malformed += 1;
                0
            }
        })
    })
    .or_report()
}

/// Per-row helper of `credential_key_census`: the position (from 1) of the census key that
/// opens the secret, 0 when none does.
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    schema = "credential_rotate"
)]
fn _credential_census_status(secret: Option<DbText>) -> i32 {
    census_row("_credential_census_status", |keys| {
        keys.status(read_text(secret))
    })
}

/// As `_credential_census_status`, for a jsonb value read in its binary form.
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    schema = "credential_rotate"
)]
fn _credential_census_status_jsonb(secret: Option<RawJsonb>) -> i32 {
    census_row("_credential_census_status_jsonb", |keys| {
        keys.status(read_jsonb(secret))
    })
}
