//! Client mode: the keys never leave this process; the server only ever sees ciphertext.
//!
//! One transaction: lock the table as the extension does (writers wait, readers do not),
//! refuse row-level security, stream the rows through a portal in batches, decide each row
//! with the shared core, stage the re-sealed values in a temporary table batch by batch, then
//! one `UPDATE … FROM` the staged rows, a verification pass proving that every row re-sealed
//! holds exactly what was written, and COMMIT. Any refusal rolls the whole transaction back.
//! Memory holds one batch, whatever the table's size.

use credential_rotate_core::envelope::{DryRun, Rotation, Rotator};
use postgres::{IsolationLevel, Transaction};

use crate::config::RotationKeys;
use crate::error::{Error, Result};
use crate::output::{Output, RotateCounts};
use crate::target::{Lock, RowId, Target, Tid};
use credential_rotate_core::table::ColumnType;
use credential_rotate_core::table::TargetError;

/// What a run works on and how.
pub struct Options {
    pub table: String,
    pub column: String,
    pub dry_run: bool,
    /// Rows fetched, decided and staged at a time.
    pub batch_rows: i32,
    /// `lock_timeout` for the run's transaction (a PostgreSQL interval or milliseconds).
    pub lock_timeout: String,
}

/// The temporary tables of a run: dropped at COMMIT or ROLLBACK, in this session's own
/// temporary schema (named `pg_temp` explicitly, so no other schema can stand in).
const STAGED: &str = "pg_temp.credential_rotate_staged";
const WRITTEN: &str = "pg_temp.credential_rotate_written";

/// The re-sealed rows of one batch, column by column, for `unnest`.
#[derive(Default)]
struct Batch {
    seq: Vec<i64>,
    table: Vec<u32>,
    tid: Vec<Tid>,
    value: Vec<String>,
}

impl Batch {
    fn clear(&mut self) {
        self.seq.clear();
        self.table.clear();
        self.tid.clear();
        self.value.clear();
    }
}

/// Starts the run's transaction: READ COMMITTED (the extension's requirement too) and a
/// `lock_timeout` so that the lock is never awaited forever.
pub fn begin<'a>(
    client: &'a mut postgres::Client,
    lock_timeout: &str,
    read_only: bool,
) -> Result<Transaction<'a>> {
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .read_only(read_only)
        .start()?;
    tx.execute(
        "SELECT pg_catalog.set_config('lock_timeout', $1::pg_catalog.text, true)",
        &[&lock_timeout],
    )?;
    Ok(tx)
}

/// The query that streams the rows: where each is stored, and its value as text.
pub fn scan_statement(target: &Target) -> String {
    format!(
        "SELECT tableoid, ctid, {col}::pg_catalog.text FROM {rel}",
        col = target.column,
        rel = target.relation
    )
}

/// Rotates (or, dry, counts what a rotation would do). Returns the counts once COMMIT has
/// succeeded; a lost connection during COMMIT is [`Error::OutcomeUnknown`].
pub fn rotate(
    client: &mut postgres::Client,
    options: &Options,
    keys: &RotationKeys,
    out: &Output,
) -> Result<RotateCounts> {
    let mut tx = begin(client, &options.lock_timeout, options.dry_run)?;
    let lock = if options.dry_run {
        Lock::AccessShare
    } else {
        Lock::ShareRowExclusive
    };
    let target = Target::resolve(&mut tx, &options.table, &options.column, lock)?;
    let rotator = if keys.old.len() == 1 {
        Rotator::new(&keys.old[0], &keys.new)
    } else {
        Rotator::with_old_keys(&keys.old, &keys.new)
    };
    let ty = target.column_type.sql();
    let stage = if options.dry_run {
        None
    } else {
        tx.batch_execute(&format!(
            "CREATE TEMPORARY TABLE credential_rotate_staged
                 (seq pg_catalog.int8, rel pg_catalog.oid, tid pg_catalog.tid, val {ty}) ON COMMIT DROP;
             CREATE TEMPORARY TABLE credential_rotate_written
                 (seq pg_catalog.int8, rel pg_catalog.oid, tid pg_catalog.tid) ON COMMIT DROP"
        ))?;
        Some(tx.prepare(&format!(
            "INSERT INTO {STAGED} (seq, rel, tid, val)
             SELECT b.seq, b.rel, b.tid, b.val::{ty}
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.oid[]),
                               pg_catalog.unnest($3::pg_catalog.tid[]), pg_catalog.unnest($4::pg_catalog.text[]))
                    AS b(seq, rel, tid, val)"
        ))?)
    };

    let total = if out.shows_progress() {
        let count = format!("SELECT pg_catalog.count(*) FROM {}", target.relation);
        Some(tx.query_one(&count, &[])?.try_get::<_, i64>(0)?.max(0) as u64)
    } else {
        None
    };
    let bar = out.progress(total);
    bar.set_message(if options.dry_run {
        "dry run"
    } else {
        "re-sealing"
    });

    let mut counts = RotateCounts {
        opened_by: Some(vec![0; keys.old.len()]),
        ..RotateCounts::default()
    };
    let mut batch = Batch::default();
    let portal = tx.bind(&scan_statement(&target), &[])?;
    loop {
        let rows = tx.query_portal(&portal, options.batch_rows)?;
        if rows.is_empty() {
            break;
        }
        batch.clear();
        for row in &rows {
            counts.scanned += 1;
            let id = RowId {
                table: row.try_get(0)?,
                tid: row.try_get(1)?,
            };
            let text: Option<&str> = row.try_get(2)?;
            // A dry run only decides; a rotation also re-seals (and stages the value).
            let decided = match (text, options.dry_run) {
                (None, _) => Ok(DryRun::Empty),
                (Some(text), true) => rotator.dry_run(text),
                (Some(text), false) => rotator.rotate(text).map(|r| match r {
                    Rotation::Empty => DryRun::Empty,
                    Rotation::AlreadyCurrent => DryRun::AlreadyCurrent,
                    Rotation::Resealed { value, by } => {
                        if stage.is_some() {
                            batch.seq.push(counts.updated + 1);
                            batch.table.push(id.table);
                            batch.tid.push(id.tid);
                            batch.value.push(value.into_json());
                        }
                        DryRun::WouldReseal { by }
                    }
                }),
            };
            match decided {
                Ok(DryRun::Empty) => counts.empty += 1,
                Ok(DryRun::AlreadyCurrent) => counts.already_current += 1,
                Ok(DryRun::WouldReseal { by }) => {
                    counts.updated += 1;
                    if let Some(n) = counts.opened_by.as_mut().and_then(|v| v.get_mut(by)) {
                        *n += 1;
                    }
                }
                Err(reason) => {
                    bar.finish_and_clear();
                    let pk = target.describe_row(&mut tx, id);
                    return Err(TargetError::Row {
                        table: target.relation.clone(),
                        pk,
                        reason,
                    }
                    .into());
                }
            }
        }
        if let (Some(stage), false) = (&stage, batch.seq.is_empty()) {
            tx.execute(stage, &[&batch.seq, &batch.table, &batch.tid, &batch.value])?;
        }
        bar.inc(rows.len() as u64);
    }
    drop(portal);
    bar.finish_and_clear();

    if stage.is_some() && counts.updated > 0 {
        let spinner = out.spinner("writing the re-sealed rows and verifying them");
        write_and_verify(&mut tx, &target, counts.updated)?;
        spinner.finish_and_clear();
    }
    if options.dry_run {
        tx.rollback()?;
        return Ok(counts);
    }
    commit(tx)?;
    Ok(counts)
}

/// One `UPDATE … FROM` the staged rows, recording where each row's new version landed; then
/// proves, before COMMIT, that each of them holds exactly the value staged for it. A trigger
/// that skips a row, keeps the old secret, or rewrites the row after the UPDATE fails the run.
fn write_and_verify(tx: &mut Transaction<'_>, target: &Target, expected: i64) -> Result<()> {
    let (rel, col) = (&target.relation, &target.column);
    let updated = tx.execute(
        &format!(
            "WITH u AS (
                 UPDATE {rel} AS t SET {col} = s.val
                   FROM {STAGED} AS s
                  WHERE t.tableoid OPERATOR(pg_catalog.=) s.rel
                    AND t.ctid OPERATOR(pg_catalog.=) s.tid
              RETURNING s.seq, t.tableoid, t.ctid)
             INSERT INTO {WRITTEN} (seq, rel, tid) SELECT seq, tableoid, ctid FROM u"
        ),
        &[],
    )?;
    let expected = expected as u64;
    if updated != expected {
        return Err(Error::RowsSkipped {
            table: rel.clone(),
            expected,
            skipped: expected.saturating_sub(updated),
        });
    }
    // json has no equality operator: its text is what it stores.
    let same = match target.column_type {
        ColumnType::Json => {
            format!("t.{col}::pg_catalog.text OPERATOR(pg_catalog.=) s.val::pg_catalog.text")
        }
        ColumnType::Jsonb | ColumnType::Text => format!("t.{col} OPERATOR(pg_catalog.=) s.val"),
    };
    // A row whose new version was updated again (by an AFTER trigger) is no longer visible at
    // the tid the UPDATE returned, and is missing from the count.
    let holding: i64 = tx
        .query_one(
            &format!(
                "SELECT pg_catalog.count(*)
                   FROM {WRITTEN} AS w
                   JOIN {STAGED} AS s ON s.seq OPERATOR(pg_catalog.=) w.seq
                   JOIN {rel} AS t ON t.tableoid OPERATOR(pg_catalog.=) w.rel
                                  AND t.ctid OPERATOR(pg_catalog.=) w.tid
                  WHERE {same}"
            ),
            &[],
        )?
        .try_get(0)?;
    let holding = holding.max(0) as u64;
    if holding != expected {
        return Err(Error::VerificationFailed {
            table: rel.clone(),
            written: expected,
            mismatched: expected - holding.min(expected),
        });
    }
    Ok(())
}

/// COMMIT. An ERROR in answer means the server rolled back; anything else (the connection
/// lost before the answer, or a FATAL that ends the session, which can come after the commit
/// record was written) means nobody here knows.
pub fn commit(tx: Transaction<'_>) -> Result<()> {
    match tx.commit() {
        Ok(()) => Ok(()),
        Err(e) if e.as_db_error().is_some_and(|db| db.severity() == "ERROR") => Err(e.into()),
        Err(e) => Err(Error::OutcomeUnknown(match e.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => e.to_string(),
        })),
    }
}
