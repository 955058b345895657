//! The library side of `credential_reencrypt_batched` (sql/batched.sql): the checks before the
//! first batch, one batch, and its size.
//!
//! A batch is the next `batch_rows` rows in the table's physical order, from the tid where the
//! previous one ended: under the table lock, in the batch's own transaction, a TID range scan
//! finds the tid of the row after them, and the rotation covers `[from, that tid)`. The count
//! is of the rows actually there, so a batch holds at most `batch_rows` rows whatever the
//! planner statistics say (never analysed, `reltuples = 0`, stale, bloated). Tids of a
//! partitioned table or of inheritance children are counted across all of them at once.
//!
//! The procedure keeps its running totals in a `bigint[]` it hands back to each call
//! ([`State`]), so that its PL/pgSQL needs no operator at all (it cannot fix its search_path:
//! a procedure with a SET clause cannot COMMIT).

use pgrx::datum::Array;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::args;
use crate::encoding::DbText;
use crate::error::{Error, OrReport};
use crate::hygiene;
use crate::progress::Notice;
use crate::rotate::{self, Extent, Options, RotationKeys};
use crate::statement::{SafeSearchPath, Tid};
use crate::target::{self, Target};

/// Where the search for a batch's end starts, in blocks, before any batch has been measured.
const FIRST_WINDOW: u32 = 16;

/// The running totals of one `credential_reencrypt_batched` call, as the `bigint[]` its
/// PL/pgSQL carries from batch to batch: batches, scanned, re-sealed, already current, empty,
/// the last window, the block where batches end (-1 until the first batch), then the rows
/// each old key opened.
#[derive(Debug, Default, PartialEq)]
struct State {
    batches: i64,
    scanned: i64,
    updated: i64,
    already_current: i64,
    empty: i64,
    window: u32,
    /// The table's size in blocks when the first batch started: batches stop there. Rows
    /// beyond (the new versions the batches wrote, rows the application added meanwhile) are
    /// the final pass's.
    end_block: i64,
    opened_by: Vec<i64>,
}

const STATE_FIELDS: usize = 7;

impl State {
    fn new(keys: usize) -> State {
        State {
            window: FIRST_WINDOW,
            end_block: -1,
            opened_by: vec![0; keys],
            ..State::default()
        }
    }

    fn to_array(&self) -> Vec<i64> {
        let mut a = vec![
            self.batches,
            self.scanned,
            self.updated,
            self.already_current,
            self.empty,
            i64::from(self.window),
            self.end_block,
        ];
        a.extend(&self.opened_by);
        a
    }

    fn from_array(a: &[Option<i64>], keys: usize) -> Result<State, Error> {
        let a: Vec<i64> = a.iter().map(|v| v.unwrap_or(i64::MIN)).collect();
        if a.len() != STATE_FIELDS + keys || a.iter().any(|v| *v < -1) {
            return Err(Error::Internal(
                "a batch's state is not one this library made".into(),
            ));
        }
        Ok(State {
            batches: a[0],
            scanned: a[1],
            updated: a[2],
            already_current: a[3],
            empty: a[4],
            window: u32::try_from(a[5]).unwrap_or(u32::MAX).max(1),
            end_block: a[6],
            opened_by: a[STATE_FIELDS..].to_vec(),
        })
    }

    fn add(&mut self, r: &rotate::Rotated) {
        self.scanned += r.counts.scanned;
        self.updated += r.counts.updated;
        self.already_current += r.counts.already_current;
        self.empty += r.counts.empty;
        for (total, (_, n)) in self.opened_by.iter_mut().zip(&r.opened_by) {
            *total += n;
        }
    }
}

/// Whether the current role may execute a `credential_reencrypt_batched` of this extension,
/// either form: each is granted by its own signature, and either may run every batch.
fn may_execute_batched() -> Result<(), Error> {
    let _path = SafeSearchPath::enter();
    let allowed = Spi::connect(|client| {
        client
            .select(
                "SELECT pg_catalog.bool_or(pg_catalog.has_function_privilege(p.oid, 'EXECUTE'))
                   FROM pg_catalog.pg_proc p
                   JOIN pg_catalog.pg_extension e ON e.extnamespace OPERATOR(pg_catalog.=) p.pronamespace
                  WHERE e.extname OPERATOR(pg_catalog.=) 'credential_rotate'
                    AND p.proname OPERATOR(pg_catalog.=) 'credential_reencrypt_batched'",
                Some(1),
                &[],
            )?
            .first()
            .get_one::<bool>()
    })?;
    if allowed == Some(true) {
        Ok(())
    } else {
        Err(Error::PermissionDenied("credential_reencrypt_batched"))
    }
}

/// First of all in `credential_reencrypt_batched`, before any row is read: the keys, the batch
/// size, the privilege, and a context that lets it commit (a `CALL` in autocommit, not inside
/// `BEGIN` or a function); then the NOTICE saying how batches are sized. Returns the
/// procedure's initial state.
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    schema = "credential_rotate"
)]
fn _credential_batched_start<'a>(
    old_keys: Option<Array<'a, DbText>>,
    new_key: Option<DbText>,
    batch_rows: Option<i32>,
) -> Vec<i64> {
    hygiene::mark_statement();
    let keys = (|| {
        let (old, _new) = args::several_old(old_keys.as_ref().map(|a| a.iter()), new_key.as_ref())?;
        match batch_rows {
            Some(n) if n >= 1 => {}
            _ => return Err(Error::BatchRows),
        }
        may_execute_batched()?;
        // SAFETY: reads the state of the SPI connection of the calling procedure.
        if !unsafe { pg_sys::SPI_inside_nonatomic_context() } {
            return Err(Error::BatchedInTransaction);
        }
        Ok(old.len())
    })()
    .or_report();
    Notice::new(
        format!(
            "credential_reencrypt_batched: batches of at most {} rows, counted under the table lock before each batch (planner statistics are not used), then one final pass over the whole table",
            batch_rows.unwrap_or_default()
        ),
        "Each batch commits on its own; writers wait at most for one batch, and for the final pass.",
    )
    .report();
    State::new(keys).to_array()
}

/// One batch of `credential_reencrypt_batched`: the next `batch_rows` rows from tid `resume`,
/// then the tid where the next batch starts (NULL at the table's end); with `resume` NULL, the
/// final pass over the whole table (its `resume` is NULL too). Raises the batch's NOTICE.
///
/// Executable by PUBLIC, but it refuses unless the caller may execute
/// `credential_reencrypt_batched`: a rotation role is granted the procedure it uses, not the
/// procedure's internals.
#[allow(clippy::too_many_arguments)]
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_invoker,
    schema = "credential_rotate"
)]
fn _credential_reencrypt_batch<'a>(
    old_keys: Option<Array<'a, DbText>>,
    new_key: Option<DbText>,
    target_table: Option<DbText>,
    secret_column: Option<DbText>,
    batch_rows: Option<i32>,
    resume: Option<pg_sys::ItemPointerData>,
    state: Option<Array<'a, i64>>,
) -> TableIterator<
    'static,
    (
        name!(resume, Option<pg_sys::ItemPointerData>),
        name!(state, Vec<i64>),
    ),
> {
    hygiene::mark_statement();
    let (next, state, notice) = (|| {
        may_execute_batched()?;
        let keys = RotationKeys::several(old_keys.as_ref(), new_key.as_ref())?;
        let state: Vec<Option<i64>> = state.ok_or(Error::NullArgument("state"))?.iter().collect();
        let mut state = State::from_array(&state, keys.old_fingerprints.len())?;
        let rows = i64::from(batch_rows.ok_or(Error::BatchRows)?.max(1));
        let (table, column) = target::names(target_table, secret_column)?;
        let extent = match resume {
            Some(from) => Extent::Batch {
                from: from.into(),
                rows,
                window: state.window,
                end_block: state.end_block,
            },
            None => Extent::Table,
        };
        let options = Options {
            dry_run: false,
            touch_updated_at: false,
            extent,
        };
        let rotated = rotate::rotate(keys, &table, &column, options)?;
        state.add(&rotated);
        let notice = match extent {
            Extent::Batch { from, .. } => {
                state.batches += 1;
                state.window = rotated.window;
                state.end_block = rotated.end_block;
                batch_notice(&state, from, rotated.next, &rotated)
            }
            Extent::Table => final_notice(&state, &rotated),
        };
        Ok::<_, Error>((rotated.next, state, notice))
    })()
    .or_report();
    notice.report();
    TableIterator::once((next.map(Into::into), state.to_array()))
}

fn batch_notice(state: &State, from: Tid, to: Option<Tid>, r: &rotate::Rotated) -> Notice {
    let to = to.map_or("the end".to_owned(), |t| format!("{t}"));
    Notice::new(
        format!(
            "credential_reencrypt_batched: batch {} (from {from} to {to}): {} rows, {} re-sealed, {} already current, {} empty",
            state.batches, r.counts.scanned, r.counts.updated, r.counts.already_current, r.counts.empty
        ),
        "",
    )
}

fn final_notice(state: &State, r: &rotate::Rotated) -> Notice {
    let by_key = r
        .opened_by
        .iter()
        .zip(&state.opened_by)
        .map(|((fingerprint, _), rows)| format!("{rows} with old key {fingerprint}"))
        .collect::<Vec<_>>()
        .join(", ");
    Notice::new(
        format!(
            "credential_reencrypt_batched: final pass over {} rows: {} re-sealed, {} already current, {} empty; {} re-sealed in all, opened {by_key}",
            r.counts.scanned, r.counts.updated, r.counts.already_current, r.counts.empty, state.updated
        ),
        "Keys are named by their fingerprint, as credential_key_fingerprint() gives it.",
    )
}

impl std::fmt::Display for Tid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({},{})", self.block, self.offset)
    }
}

/// Where a batch of `rows` rows from `from` ends: the tid of the first row after them (`None`
/// when fewer rows are left before block `end_block`), the window of blocks that found it (the
/// next batch's first guess) and `end_block` (the table's size now if it is -1). Looks in a
/// window of blocks from `from`, doubled until it holds more than `rows` rows or reaches the
/// end: reading at most twice the blocks the batch spans. Runs under the table lock, so nobody
/// adds a row to the range meanwhile.
pub fn batch_end(
    client: &mut SpiClient<'_>,
    target: &Target,
    from: Tid,
    rows: i64,
    mut window: u32,
    end_block: i64,
) -> Result<BatchEnd, Error> {
    let end_block = if end_block >= 0 {
        end_block
    } else {
        client
            .select(
                "WITH RECURSIVE rels(oid) AS (
                     SELECT $1::pg_catalog.oid
                   UNION
                     SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN rels r ON i.inhparent OPERATOR(pg_catalog.=) r.oid
                 )
                 SELECT pg_catalog.max(pg_catalog.pg_relation_size(r.oid::pg_catalog.regclass)
                                       OPERATOR(pg_catalog./) pg_catalog.current_setting('block_size')::pg_catalog.int8)
                   FROM rels r",
                Some(1),
                &[target.oid.into()],
            )?
            .first()
            .get_one::<i64>()?
            .unwrap_or(0)
    };
    let end = Tid {
        block: u32::try_from(end_block).unwrap_or(u32::MAX),
        offset: 0,
    };
    loop {
        let upper = Tid {
            block: u32::try_from(i64::from(from.block) + i64::from(window)).unwrap_or(u32::MAX),
            offset: 0,
        }
        .min(end);
        let found = client
            .select(
                &crate::encoding::sql(&target.batch_end_statement(from, upper, rows))?,
                Some(1),
                &[],
            )?
            .first();
        let found = if found.is_empty() {
            None
        } else {
            found.get_one::<pg_sys::ItemPointerData>()?
        };
        if let Some(found) = found {
            let mut to = Tid::from(found);
            // Rows of several partitions at the very tid `from`: take them all, or no batch
            // would ever move on.
            if to == from {
                to.offset = to.offset.saturating_add(1);
            }
            let span = to.block.saturating_sub(from.block).saturating_add(1);
            return Ok(BatchEnd {
                to,
                last: false,
                window: span.saturating_add(span / 4).max(1),
                end_block,
            });
        }
        if upper == end {
            return Ok(BatchEnd {
                to: end,
                last: true,
                window,
                end_block,
            });
        }
        window = window.saturating_mul(2);
    }
}

/// Where a batch ends ([`batch_end`]).
pub struct BatchEnd {
    /// The batch is the rows before this tid.
    pub to: Tid,
    /// No batch comes after this one.
    pub last: bool,
    pub window: u32,
    pub end_block: i64,
}

/// The batch helpers of releases before 0.4.0, whose install and upgrade scripts still name
/// them: a database created at such a version, or being upgraded through one, needs the
/// symbols. Not in the 0.4.0 catalog (`sql = false`); called, they say what to do.
mod before_0_4_0 {
    use pgrx::prelude::*;

    fn update_first() -> ! {
        crate::error::Error::OlderVersion.report()
    }

    #[pg_extern(sql = false)]
    fn _credential_reencrypt_blocks() {
        update_first()
    }

    #[pg_extern(sql = false)]
    fn _credential_reencrypt_blocks_keys() {
        update_first()
    }

    #[pg_extern(sql = false)]
    fn _credential_check_old_keys() {
        update_first()
    }
}
