//! Client mode's read-only scans: `verify` (every row against one key) and `census` (rows by
//! the key that opens them), streamed in batches through a portal and classified by the
//! shared core exactly as `credential_verify` and `credential_key_census` classify them.

use credential_rotate_core::envelope::{Cipher, KeyRing, Secret, Status};
use credential_rotate_core::key::Key;

use crate::client::{begin, scan_statement};
use crate::error::Result;
use crate::output::{CensusCounts, Output, VerifyCounts};
use crate::target::{Lock, Target};

/// Streams every row's value through `classify`; returns the relation's quoted name.
fn scan(
    client: &mut postgres::Client,
    table: &str,
    column: &str,
    batch_rows: i32,
    lock_timeout: &str,
    out: &Output,
    mut classify: impl FnMut(Option<&str>),
) -> Result<String> {
    let mut tx = begin(client, lock_timeout, true)?;
    let target = Target::resolve(&mut tx, table, column, Lock::AccessShare)?;
    let bar = out.progress(None);
    bar.set_message("reading");
    let portal = tx.bind(&scan_statement(&target), &[])?;
    loop {
        let rows = tx.query_portal(&portal, batch_rows)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            classify(row.try_get(2)?);
        }
        bar.inc(rows.len() as u64);
    }
    bar.finish_and_clear();
    drop(portal);
    tx.rollback()?;
    Ok(target.relation)
}

/// A stored value's status under `status`: NULL counts as empty, as in the extension.
fn status_of(text: Option<&str>, status: impl FnOnce(&str) -> Status) -> Status {
    text.map_or(Status::Empty, status)
}

pub fn verify(
    client: &mut postgres::Client,
    options: &crate::client::Options,
    key: &Key,
    out: &Output,
) -> Result<(VerifyCounts, String)> {
    let cipher = Cipher::new(key);
    let mut counts = VerifyCounts::default();
    let relation = scan(
        client,
        &options.table,
        &options.column,
        options.batch_rows,
        &options.lock_timeout,
        out,
        |text| match status_of(text, |t| cipher.status(t)) {
            Status::Empty => counts.empty += 1,
            Status::Readable { .. } => counts.readable += 1,
            Status::NotReadable => counts.not_readable += 1,
            Status::Malformed(_) => counts.malformed += 1,
        },
    )?;
    Ok((counts, relation))
}

pub fn census(
    client: &mut postgres::Client,
    options: &crate::client::Options,
    keys: &[Key],
    out: &Output,
) -> Result<(CensusCounts, String)> {
    let ring = KeyRing::new(keys);
    let mut counts = CensusCounts {
        readable: vec![0; keys.len()],
        ..CensusCounts::default()
    };
    let relation = scan(
        client,
        &options.table,
        &options.column,
        options.batch_rows,
        &options.lock_timeout,
        out,
        |text| match status_of(text, |t| ring.status(Secret::parse_sealed(t))) {
            Status::Empty => counts.empty += 1,
            Status::Readable { by } => {
                if let Some(n) = counts.readable.get_mut(by) {
                    *n += 1;
                }
            }
            Status::NotReadable => counts.not_readable += 1,
            Status::Malformed(_) => counts.malformed += 1,
        },
    )?;
    Ok((counts, relation))
}
