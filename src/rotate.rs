//! `credential_reencrypt`, from one old key or several: plan (resolve and check the table,
//! build the statement), then execute (one set-based statement driving the per-row helpers of
//! [`crate::reseal`], each row checked as stored, the audit row). The batches of
//! `credential_reencrypt_batched` ([`crate::batched`]) go the same way over a range of rows.

use std::ffi::CString;
use std::rc::Rc;

use pgrx::datum::Array;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::args;
use crate::call::{self, Counts, Rotating, Work};
use crate::encoding::{self, DbText};
use crate::envelope::{Cipher, Rotator};
use crate::error::{required, Error, OrReport};
use crate::key::Key;
use crate::statement::Tid;
use crate::target::{self, Confined, Lock, Target};
use crate::{audit, hygiene, progress, table_code, written};

/// Re-encrypts every secret of the target column from `old_key` to `new_key`, in place, in
/// the caller's transaction.
#[pg_extern(volatile, parallel_unsafe, security_invoker)]
fn credential_reencrypt(
    old_key: Option<DbText>,
    new_key: Option<DbText>,
    target_table: default!(Option<DbText>, "'credential_profiles'"),
    secret_column: default!(Option<DbText>, "'secret'"),
    dry_run: default!(Option<bool>, false),
    touch_updated_at: default!(Option<bool>, false),
) -> TableIterator<
    'static,
    (
        name!(scanned, i64),
        name!(updated, i64),
        name!(already_current, i64),
        name!(empty, i64),
    ),
> {
    hygiene::mark_statement();
    let c = (|| {
        let keys = RotationKeys::one(old_key.as_ref(), new_key.as_ref())?;
        let options = Options::whole_table(dry_run, touch_updated_at)?;
        let (table, column) = target::names(target_table, secret_column)?;
        rotate(keys, &table, &column, options).map(|r| r.counts)
    })()
    .or_report();
    TableIterator::once((c.scanned, c.updated, c.already_current, c.empty))
}

/// As `credential_reencrypt(text, text, …)`, from any of several old keys: a row that opens
/// with one of `old_keys` is re-sealed under `new_key`. Ends with a NOTICE of the rows each old
/// key opened, by fingerprint, as the audit row records them.
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    name = "credential_reencrypt"
)]
fn credential_reencrypt_keys<'a>(
    old_keys: Option<Array<'a, DbText>>,
    new_key: Option<DbText>,
    target_table: default!(Option<DbText>, "'credential_profiles'"),
    secret_column: default!(Option<DbText>, "'secret'"),
    dry_run: default!(Option<bool>, false),
    touch_updated_at: default!(Option<bool>, false),
) -> TableIterator<
    'static,
    (
        name!(scanned, i64),
        name!(updated, i64),
        name!(already_current, i64),
        name!(empty, i64),
    ),
> {
    hygiene::mark_statement();
    let (rotated, dry) = (|| {
        let keys = RotationKeys::several(old_keys.as_ref(), new_key.as_ref())?;
        let options = Options::whole_table(dry_run, touch_updated_at)?;
        let dry = options.dry_run;
        let (table, column) = target::names(target_table, secret_column)?;
        Ok::<_, Error>((rotate(keys, &table, &column, options)?, dry))
    })()
    .or_report();
    progress::opened_by_notice(&rotated.opened_by, rotated.counts.updated, dry).report();
    let c = rotated.counts;
    TableIterator::once((c.scanned, c.updated, c.already_current, c.empty))
}

/// The keys of a rotation, parsed once per call: the ciphers built and the fingerprints taken,
/// the keys themselves are dropped (and wiped).
pub struct RotationKeys {
    rotator: Rc<Rotator>,
    /// The new key alone, for the check after table code that could write rows again.
    new: Rc<Cipher>,
    pub old_fingerprints: Vec<String>,
    new_fingerprint: String,
}

impl RotationKeys {
    pub fn one(old_key: Option<&DbText>, new_key: Option<&DbText>) -> Result<Self, Error> {
        let (old, new) = args::one_old(old_key, new_key)?;
        Ok(RotationKeys::of(
            Rotator::new(&old, &new),
            std::slice::from_ref(&old),
            &new,
        ))
    }

    pub fn several(
        old_keys: Option<&Array<'_, DbText>>,
        new_key: Option<&DbText>,
    ) -> Result<Self, Error> {
        let (old, new) = args::several_old(old_keys.map(|a| a.iter()), new_key)?;
        Ok(RotationKeys::of(
            Rotator::with_old_keys(&old, &new),
            &old,
            &new,
        ))
    }

    fn of(rotator: Rotator, old: &[Key], new: &Key) -> RotationKeys {
        RotationKeys {
            rotator: Rc::new(rotator),
            new: Rc::new(Cipher::new(new)),
            old_fingerprints: old.iter().map(Key::fingerprint).collect(),
            new_fingerprint: new.fingerprint(),
        }
    }
}

pub struct Options {
    pub dry_run: bool,
    pub touch_updated_at: bool,
    /// The whole table, or one batch of the batched procedure.
    pub extent: Extent,
}

impl Options {
    /// The options of `credential_reencrypt`, from its arguments.
    fn whole_table(
        dry_run: Option<bool>,
        touch_updated_at: Option<bool>,
    ) -> Result<Options, Error> {
        Ok(Options {
            dry_run: required(dry_run, "dry_run")?,
            touch_updated_at: required(touch_updated_at, "touch_updated_at")?,
            extent: Extent::Table,
        })
    }
}

/// Which rows a rotation covers.
#[derive(Debug, Clone, Copy)]
pub enum Extent {
    Table,
    /// The next `rows` rows from tid `from` on, in the table's physical order, counted under
    /// the table lock ([`crate::batched`]); `window` is where the count starts looking, in
    /// blocks; batches end at block `end_block` (-1: the table's size now).
    Batch {
        from: Tid,
        rows: i64,
        window: u32,
        end_block: i64,
    },
}

/// What a rotation did: its counts, and the rows each old key opened, by fingerprint, in the
/// order the keys were given; for a batch, where the next one starts (`None`: no batch is
/// left), the window that found this one's end, and where batches end.
pub struct Rotated {
    pub counts: Counts,
    pub opened_by: Vec<(String, i64)>,
    pub next: Option<Tid>,
    pub window: u32,
    pub end_block: i64,
}

/// A planned rotation: the table resolved, locked and checked, the statement built.
struct Plan {
    target: Rc<Target>,
    statement: CString,
    /// Whether the table's own AFTER triggers may write rows again once they are stored.
    after_triggers: bool,
    range: Option<(Tid, Tid)>,
    batch: Option<crate::batched::BatchEnd>,
}

pub fn rotate(
    keys: RotationKeys,
    table: &str,
    column: &str,
    options: Options,
) -> Result<Rotated, Error> {
    // Under REPEATABLE READ or SERIALIZABLE the UPDATE would use the transaction's snapshot,
    // taken before our table lock was granted: a row inserted under the old key while we
    // waited for the lock would be invisible to the rotation and silently stay behind.
    // SAFETY: reads a backend-local setting.
    if !options.dry_run && unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(Error::IsolationLevel);
    }
    Spi::connect_mut(|client| {
        let (plan, _confined) = plan(client, table, column, &options)?;
        execute(client, plan, keys, options.dry_run)
    })
}

fn plan(
    client: &mut SpiClient<'_>,
    table: &str,
    column: &str,
    options: &Options,
) -> Result<(Plan, Confined), Error> {
    let lock = if options.dry_run {
        Lock::AccessShare
    } else {
        Lock::ShareRowExclusive
    };
    let (target, confined) = Target::resolve(client, table, column, lock)?;
    let touch = if options.touch_updated_at {
        Some(target.timestamp_column(client, "updated_at")?)
    } else {
        None
    };
    let after_triggers = if options.dry_run {
        false
    } else {
        let mut written = vec![target.column_name.as_str()];
        if touch.is_some() {
            written.push("updated_at");
        }
        let code = table_code::inspect(client, target.oid, &written)?;
        match code.refused {
            Some(code) if !crate::settings::trust_table_code() => {
                return Err(Error::ForeignTableCode {
                    table: target.relation.clone(),
                    code,
                })
            }
            _ => code.after_triggers,
        }
    };
    let batch = match options.extent {
        Extent::Table => None,
        Extent::Batch {
            from,
            rows,
            window,
            end_block,
        } => Some(crate::batched::batch_end(
            client, &target, from, rows, window, end_block,
        )?),
    };
    let range = match (options.extent, &batch) {
        (Extent::Batch { from, .. }, Some(end)) => Some((from, end.to)),
        _ => None,
    };
    let statement =
        encoding::sql(&target.rotation_statement(options.dry_run, touch.as_deref(), range))?;
    let plan = Plan {
        target: Rc::new(target),
        statement,
        after_triggers,
        range,
        batch,
    };
    Ok((plan, confined))
}

fn execute(
    client: &mut SpiClient<'_>,
    plan: Plan,
    keys: RotationKeys,
    dry_run: bool,
) -> Result<Rotated, Error> {
    let work = Work::Rotate(Rotating::new(keys.rotator, dry_run));
    let guard = call::install(work, Rc::clone(&plan.target))?;
    if dry_run {
        client.select(&plan.statement, Some(1), &[])?;
    } else {
        let updated = written::execute(&plan.statement)?;
        written::confirm_all(updated)?;
    }
    let (counts, opened) = guard.read(|work| match work {
        Work::Rotate(r) => Ok((r.counts, r.opened_by.clone())),
        Work::Verify(_) | Work::Census(_) => Err(Error::Internal("not a rotation".into())),
    })??;
    drop(guard);
    let opened_by: Vec<(String, i64)> = keys.old_fingerprints.iter().cloned().zip(opened).collect();
    let rotated = Rotated {
        counts,
        opened_by,
        next: plan.batch.as_ref().filter(|b| !b.last).map(|b| b.to),
        window: plan.batch.as_ref().map_or(0, |b| b.window),
        end_block: plan.batch.as_ref().map_or(-1, |b| b.end_block),
    };
    if dry_run {
        return Ok(rotated);
    }
    // AFTER triggers ran once the rows were stored and could have written them again: the
    // whole table must now open with the new key. A batch leaves that to the final pass.
    if plan.after_triggers && plan.range.is_none() {
        check_rotated(client, &plan.target, keys.new)?;
    }
    audit::append(
        client,
        &plan.target,
        counts,
        &rotated.opened_by,
        &keys.old_fingerprints,
        keys.new_fingerprint,
    )?;
    Ok(rotated)
}

/// Refuses the rotation unless every row of the table opens with the new key or is empty.
fn check_rotated(
    client: &mut SpiClient<'_>,
    target: &Rc<Target>,
    new: Rc<Cipher>,
) -> Result<(), Error> {
    let c = crate::verify::statuses(client, target, new)?;
    if c.not_readable + c.malformed > 0 {
        return Err(Error::NotRotated {
            table: target.relation.clone(),
            rows: c.not_readable + c.malformed,
        });
    }
    Ok(())
}
