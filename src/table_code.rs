//! The code a call lets run: built-in code, the extension's own, and code the calling role
//! owns. Nothing else, unless a superuser accepts it with `credential_rotate.trust_table_code`.
//!
//! Code of another role inside a call runs with the caller's rights (a DBA's, often a
//! superuser's) and, before the statement text is masked, could read the keys from it. Postgres
//! runs such code through many routes during an `UPDATE`: triggers of every event row movement
//! fires and their `WHEN` clauses, constraints, index expressions and predicates, generated
//! columns, partition keys, rules, foreign-key actions and the code of the tables they reach,
//! operators, casts and domain checks in any of those. Two layers keep it out:
//!
//! - [`refusals`], before a rotation writes anything: the catalog's view of the table and its
//!   partitions, naming each piece of code and its owner, so that a DBA gets one clear error.
//! - [`Guard`], for the whole call: a `needs_fmgr_hook` that refuses any function of another
//!   role the moment Postgres looks it up to call it (or the planner to inline it), whatever
//!   route led there. It is the whitelist the catalog check can only approximate; its cost is
//!   one thread-local read per function lookup outside a call.

use std::cell::Cell;

use pgrx::pg_sys;
use pgrx::spi::SpiClient;

use crate::encoding::GetText;
use crate::error::Error;

/// The active guard: whose code is trusted, and the extension whose functions are.
#[derive(Clone, Copy)]
struct Trusted {
    role: pg_sys::Oid,
    extension: pg_sys::Oid,
}

thread_local! {
    static ACTIVE: Cell<Option<Trusted>> = const { Cell::new(None) };
}

static mut PREVIOUS_NEEDS_FMGR_HOOK: pg_sys::needs_fmgr_hook_type = None;

/// While alive, any function that is neither built in, nor the extension's, nor owned by the
/// calling role is refused as Postgres looks it up. Not entered when
/// `credential_rotate.trust_table_code` is on.
pub struct Guard {
    previous: Option<Trusted>,
}

impl Guard {
    pub fn enter() -> Result<Guard, Error> {
        let previous = ACTIVE.with(Cell::get);
        if crate::settings::trust_table_code() {
            return Ok(Guard { previous });
        }
        // SAFETY: plain catalog lookups in a valid transaction; get_extension_oid with
        // missing_ok = true returns InvalidOid rather than raise.
        let (role, extension) = unsafe {
            (
                pg_sys::GetUserId(),
                pg_sys::get_extension_oid(c"credential_rotate".as_ptr(), true),
            )
        };
        ACTIVE.with(|a| a.set(Some(Trusted { role, extension })));
        Ok(Guard { previous })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.previous));
    }
}

/// Ends any guard; for the transaction abort callbacks, which run where Rust destructors may
/// not have (a call that raised and whose frames were left by longjmp).
pub fn clear() {
    ACTIVE.with(|a| a.set(None));
}

/// The owner of function `oid`, `None` when it does not exist.
fn function_owner(oid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup by OID, released before returning; GETSTRUCT of a pg_proc tuple
    // is a FormData_pg_proc.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as _,
            pg_sys::Datum::from(oid),
        );
        if tuple.is_null() {
            return None;
        }
        let owner = (*pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_proc>()).proowner;
        pg_sys::ReleaseSysCache(tuple);
        Some(owner)
    }
}

fn is_trusted(oid: pg_sys::Oid, trusted: Trusted) -> bool {
    if oid.to_u32() < pg_sys::FirstNormalObjectId {
        return true;
    }
    // SAFETY: a pg_depend lookup; InvalidOid when the function belongs to no extension.
    let extension = unsafe { pg_sys::getExtensionOfObject(pg_sys::ProcedureRelationId, oid) };
    if extension != pg_sys::InvalidOid && extension == trusted.extension {
        return true;
    }
    function_owner(oid) == Some(trusted.role)
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn needs_fmgr(fn_oid: pg_sys::Oid) -> bool {
    if let Some(trusted) = ACTIVE.with(Cell::get) {
        if !is_trusted(fn_oid, trusted) {
            refuse(fn_oid);
        }
    }
    // SAFETY: the hook that was installed before ours, called as Postgres would have.
    unsafe { PREVIOUS_NEEDS_FMGR_HOOK.is_some_and(|previous| previous(fn_oid)) }
}

/// Raises the refusal of function `oid`, naming it and its owner.
fn refuse(oid: pg_sys::Oid) -> ! {
    let owner = function_owner(oid);
    // SAFETY: format_procedure and GetUserNameFromId (noerr) return palloc'd C strings.
    let (function, owner) = unsafe {
        let function = std::ffi::CStr::from_ptr(pg_sys::format_procedure(oid))
            .to_string_lossy()
            .into_owned();
        let owner = owner
            .map(|o| pg_sys::GetUserNameFromId(o, true))
            .filter(|p| !p.is_null())
            .map(|p| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
            .unwrap_or_else(|| "?".to_owned());
        (function, owner)
    };
    Error::ForeignCodeRan { function, owner }.report()
}

/// Installs the hook; called once from `_PG_init`.
pub fn install() {
    // SAFETY: _PG_init runs once per backend, single-threaded, before any of our functions.
    unsafe {
        PREVIOUS_NEEDS_FMGR_HOOK = pg_sys::needs_fmgr_hook;
        pg_sys::needs_fmgr_hook = Some(needs_fmgr);
    }
}

/// What the catalogs say about the code a rewrite of the table would run.
pub struct TableCode {
    /// Code that must not run, each as "what (function, owned by whom)"; empty when none.
    pub refused: Option<String>,
    /// The table has AFTER triggers of its own role: they run once the rotation's rows are
    /// written, and could write them again, so a whole-table rotation checks the table after.
    pub after_triggers: bool,
}

/// The catalog check of the code a rotation's UPDATE of `table` (and of its partitions or
/// children) would run: triggers of the events it fires (UPDATE; INSERT and DELETE too on a
/// partitioned table, whose rows move between partitions when a re-sealed value changes their
/// partition), their WHEN clauses, constraints, index expressions and predicates, generated
/// columns, partition keys and rules, each followed through the functions, operators and types
/// with code (domains, ranges) it depends on; a deferred trigger (it runs at COMMIT, after the
/// rotation checked what it wrote); foreign keys whose ON UPDATE action carries a change of a
/// written column into another table; foreign tables among the partitions. `written` are the
/// columns the UPDATE assigns.
pub fn inspect(
    client: &SpiClient<'_>,
    table: pg_sys::Oid,
    written: &[&str],
) -> Result<TableCode, Error> {
    let written: Vec<String> = written.iter().map(|c| (*c).to_owned()).collect();
    let row = client
        .select(
            INSPECT,
            Some(1),
            &[
                table.into(),
                // SAFETY: the current role, as the guard takes it.
                unsafe { pg_sys::GetUserId() }.into(),
                written.into(),
            ],
        )?
        .first();
    Ok(TableCode {
        refused: row.get_text(1)?,
        after_triggers: row.get::<bool>(2)?.unwrap_or(true),
    })
}

/// `$1` the table, `$2` the calling role, `$3` the names of the columns the UPDATE writes.
/// Built-in objects (OIDs below 16384) and the extension's are trusted, as the hook trusts them.
const INSPECT: &str = "
WITH RECURSIVE rels(oid) AS (
    SELECT $1::pg_catalog.oid
  UNION
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN rels r ON i.inhparent OPERATOR(pg_catalog.=) r.oid
),
partitioned AS (
    SELECT c.relkind OPERATOR(pg_catalog.=) 'p' AS yes FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1
),
-- Trigger type bits (pg_trigger.h): 2 BEFORE, 4 INSERT, 8 DELETE, 16 UPDATE, 64 INSTEAD.
triggers AS (
    SELECT t.oid, t.tgfoid, t.tgtype::pg_catalog.int4 AS tgtype, t.tgdeferrable,
           pg_catalog.format('trigger %I on %s', t.tgname, t.tgrelid::pg_catalog.regclass) AS what
      FROM pg_catalog.pg_trigger t JOIN rels r ON t.tgrelid OPERATOR(pg_catalog.=) r.oid
     WHERE NOT t.tgisinternal AND t.tgenabled OPERATOR(pg_catalog.<>) 'D'
       AND (t.tgtype::pg_catalog.int4 OPERATOR(pg_catalog.&)
            CASE WHEN (SELECT yes FROM partitioned) THEN 28 ELSE 16 END) OPERATOR(pg_catalog.<>) 0
),
-- Every catalog object whose code the UPDATE can run, as (classid, objid, what, typed): typed
-- when the types it depends on are types it coerces to (not a table's column types).
objects(classid, objid, what, typed) AS (
    SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass::pg_catalog.oid, t.oid, t.what, true FROM triggers t
  UNION ALL
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid, x.indexrelid,
           pg_catalog.format('index %s', x.indexrelid::pg_catalog.regclass), true
      FROM pg_catalog.pg_index x JOIN rels r ON x.indrelid OPERATOR(pg_catalog.=) r.oid
  UNION ALL
    SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass::pg_catalog.oid, c.oid,
           pg_catalog.format('constraint %I on %s', c.conname, c.conrelid::pg_catalog.regclass), true
      FROM pg_catalog.pg_constraint c JOIN rels r ON c.conrelid OPERATOR(pg_catalog.=) r.oid
  UNION ALL
    SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass::pg_catalog.oid, ad.oid,
           pg_catalog.format('generated column %I of %s', a.attname, a.attrelid::pg_catalog.regclass), true
      FROM pg_catalog.pg_attrdef ad JOIN rels r ON ad.adrelid OPERATOR(pg_catalog.=) r.oid
      JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) ad.adrelid
       AND a.attnum OPERATOR(pg_catalog.=) ad.adnum AND a.attgenerated OPERATOR(pg_catalog.<>) ''
  UNION ALL
    SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass::pg_catalog.oid, w.oid,
           pg_catalog.format('rule %I on %s', w.rulename, w.ev_class::pg_catalog.regclass), true
      FROM pg_catalog.pg_rewrite w JOIN rels r ON w.ev_class OPERATOR(pg_catalog.=) r.oid
     WHERE w.rulename OPERATOR(pg_catalog.<>) '_RETURN'
  UNION ALL
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid, r.oid,
           pg_catalog.format('partition key of %s', r.oid::pg_catalog.regclass), false
      FROM rels r
),
-- What each object runs: its functions, operators and types with code (through pg_depend, as
-- DROP … CASCADE would find them), and a trigger's function.
code(what, fn) AS (
    SELECT t.what, t.tgfoid FROM triggers t
  UNION ALL
    SELECT o.what, d.refobjid
      FROM objects o JOIN pg_catalog.pg_depend d
        ON d.classid OPERATOR(pg_catalog.=) o.classid AND d.objid OPERATOR(pg_catalog.=) o.objid
     WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid
  UNION ALL
    SELECT o.what, op.oprcode::pg_catalog.oid
      FROM objects o JOIN pg_catalog.pg_depend d
        ON d.classid OPERATOR(pg_catalog.=) o.classid AND d.objid OPERATOR(pg_catalog.=) o.objid
      JOIN pg_catalog.pg_operator op ON op.oid OPERATOR(pg_catalog.=) d.refobjid
     WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_operator'::pg_catalog.regclass::pg_catalog.oid
),
extension_functions AS (
    SELECT d.objid FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid
     WHERE e.extname OPERATOR(pg_catalog.=) 'credential_rotate'
       AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid
       AND d.deptype OPERATOR(pg_catalog.=) 'e'
),
refused(what) AS (
    SELECT pg_catalog.format('%s (%s, owned by %I)', c.what, p.oid::pg_catalog.regprocedure,
                             pg_catalog.pg_get_userbyid(p.proowner))
      FROM code c JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) c.fn
     WHERE p.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid AND p.proowner OPERATOR(pg_catalog.<>) $2
       AND p.oid OPERATOR(pg_catalog.<>) ALL (SELECT objid FROM extension_functions)
  UNION
    -- A domain's checks run when a value is coerced to it; a range's subtype_diff in its
    -- GiST indexes.
    SELECT pg_catalog.format('%s (type %s, owned by %I)', o.what, t.oid::pg_catalog.regtype,
                             pg_catalog.pg_get_userbyid(t.typowner))
      FROM objects o JOIN pg_catalog.pg_depend d
        ON d.classid OPERATOR(pg_catalog.=) o.classid AND d.objid OPERATOR(pg_catalog.=) o.objid
      JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) d.refobjid
     WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass::pg_catalog.oid
       AND t.typtype OPERATOR(pg_catalog.=) ANY ('{d,r,m}'::pg_catalog.\"char\"[])
       AND t.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid AND t.typowner OPERATOR(pg_catalog.<>) $2
       AND o.typed
  UNION
    -- A range type's subtype_diff runs in the GiST indexes on its columns; Postgres keeps it in
    -- its type cache, where the hook may not see it looked up again.
    SELECT pg_catalog.format('column %I of %s (range type %s, subtype_diff %s, owned by %I)',
                             a.attname, a.attrelid::pg_catalog.regclass, rt.oid::pg_catalog.regtype,
                             p.oid::pg_catalog.regprocedure, pg_catalog.pg_get_userbyid(p.proowner))
      FROM pg_catalog.pg_attribute a JOIN rels r ON a.attrelid OPERATOR(pg_catalog.=) r.oid
      JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid
      JOIN pg_catalog.pg_type rt ON rt.oid OPERATOR(pg_catalog.=) ANY (ARRAY[t.oid, t.typbasetype])
      JOIN pg_catalog.pg_range rg
        ON rt.oid OPERATOR(pg_catalog.=) ANY (ARRAY[rg.rngtypid, rg.rngmultitypid])
      JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) rg.rngsubdiff::pg_catalog.oid
     WHERE a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped
       AND p.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid AND p.proowner OPERATOR(pg_catalog.<>) $2
       AND p.oid OPERATOR(pg_catalog.<>) ALL (SELECT objid FROM extension_functions)
  UNION
    SELECT pg_catalog.format('%s (deferred to COMMIT, after the rotation checks what it wrote)', t.what)
      FROM triggers t WHERE t.tgdeferrable
  UNION
    SELECT pg_catalog.format('rule %I on %s (owned by %I)', w.rulename, w.ev_class::pg_catalog.regclass,
                             pg_catalog.pg_get_userbyid(cl.relowner))
      FROM pg_catalog.pg_rewrite w JOIN rels r ON w.ev_class OPERATOR(pg_catalog.=) r.oid
      JOIN pg_catalog.pg_class cl ON cl.oid OPERATOR(pg_catalog.=) w.ev_class
     WHERE w.rulename OPERATOR(pg_catalog.<>) '_RETURN' AND cl.relowner OPERATOR(pg_catalog.<>) $2
  UNION
    SELECT pg_catalog.format('foreign key %I on %s (ON UPDATE carries changes of %s into it)',
                             f.conname, f.conrelid::pg_catalog.regclass, f.confrelid::pg_catalog.regclass)
      FROM pg_catalog.pg_constraint f JOIN rels r ON f.confrelid OPERATOR(pg_catalog.=) r.oid
     WHERE f.contype OPERATOR(pg_catalog.=) 'f'
       AND f.confupdtype OPERATOR(pg_catalog.<>) ALL ('{a,r}'::pg_catalog.\"char\"[])
       AND EXISTS (SELECT FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid OPERATOR(pg_catalog.=) f.confrelid
                      AND a.attnum OPERATOR(pg_catalog.=) ANY (f.confkey)
                      AND a.attname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($3))
  UNION
    SELECT pg_catalog.format('foreign table %s (written through its foreign-data wrapper)', c.oid::pg_catalog.regclass)
      FROM pg_catalog.pg_class c JOIN rels r ON c.oid OPERATOR(pg_catalog.=) r.oid
     WHERE c.relkind OPERATOR(pg_catalog.=) 'f'
)
SELECT (SELECT pg_catalog.string_agg(what, '; ' ORDER BY what) FROM refused),
       EXISTS (SELECT FROM triggers t
                WHERE (t.tgtype OPERATOR(pg_catalog.&) 66) OPERATOR(pg_catalog.=) 0)";
