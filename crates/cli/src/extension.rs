//! Extension mode: the server re-seals, through the extension's own SQL functions, called
//! with the keys as bound parameters (never in any statement's text), in one transaction with
//! the same check before COMMIT as the migration script: every secret opens with the new key.
//!
//! The functions are found as members of the installed extension (pg_depend), whatever schema
//! they live in, and called by their schema-qualified name: a function of the same name that
//! another role planted elsewhere is never called.

use postgres::Client;
use zeroize::Zeroizing;

use crate::client::{begin, commit};
use crate::config::RotationKeys;
use crate::error::{Error, Result};
use crate::output::{CensusCounts, RotateCounts, VerifyCounts};

/// The entry points a command calls, by name and the type of their first argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// credential_reencrypt(old_key text, new_key text, target_table, secret_column, dry_run, …)
    Reencrypt,
    /// credential_reencrypt(old_keys text[], new_key text, target_table, secret_column, dry_run, …)
    ReencryptKeys,
    /// credential_verify(key text, target_table, secret_column)
    Verify,
    /// credential_key_census(keys text[], target_table, secret_column)
    Census,
}

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::Reencrypt | Entry::ReencryptKeys => "credential_reencrypt",
            Entry::Verify => "credential_verify",
            Entry::Census => "credential_key_census",
        }
    }

    /// pg_type OIDs of the first argument: text (25) or text[] (1009).
    fn first_arg(self) -> u32 {
        match self {
            Entry::ReencryptKeys | Entry::Census => 1009,
            Entry::Reencrypt | Entry::Verify => 25,
        }
    }
}

/// Keeps the keys, bound parameters here, out of the server log for this session: the values
/// of a failing statement's parameters (`log_parameter_max_length_on_error`, any role may set
/// it) and those `log_statement` or `log_min_duration_statement` would log with every
/// statement (`log_parameter_max_length`, superusers only). Returns whether the second could
/// be set; if not, a server that logs statements logs the keys with them.
pub fn hide_parameters(client: &mut Client) -> Result<bool> {
    client.batch_execute("SET log_parameter_max_length_on_error = 0")?;
    let logged = client
        .query_one(
            "SELECT pg_catalog.current_setting('log_statement') OPERATOR(pg_catalog.<>) 'none'
                 OR pg_catalog.current_setting('log_min_duration_statement')::pg_catalog.int4
                    OPERATOR(pg_catalog.>=) 0",
            &[],
        )?
        .try_get::<_, bool>(0)?;
    Ok(client
        .batch_execute("SET log_parameter_max_length = 0")
        .is_ok()
        || !logged)
}

/// The installed extension, as far as a command needs it.
pub struct Installed {
    pub version: String,
}

/// Why extension mode cannot run here (`Err`), or the extension's version. `entries` must all
/// be members of the extension, in a schema the role may use, executable by the role.
pub fn available(
    client: &mut Client,
    entries: &[Entry],
) -> Result<std::result::Result<Installed, String>> {
    let Some(row) = client.query_opt(
        "SELECT e.extversion FROM pg_catalog.pg_extension e
          WHERE e.extname OPERATOR(pg_catalog.=) 'credential_rotate'",
        &[],
    )?
    else {
        return Ok(Err(
            "the extension credential_rotate is not installed in this database".into(),
        ));
    };
    let version: String = row.try_get(0)?;
    for entry in entries {
        if function(client, *entry)?.is_none() {
            return Ok(Err(format!(
                "{}() of credential_rotate {version} is missing or not executable by this role",
                entry.name()
            )));
        }
    }
    Ok(Ok(Installed { version }))
}

/// The schema-qualified, server-quoted name of an entry point the role may execute.
fn function(client: &mut Client, entry: Entry) -> Result<Option<String>> {
    let row = client.query_opt(
        "SELECT pg_catalog.format('%I.%I', n.nspname, p.proname)
           FROM pg_catalog.pg_extension e
           JOIN pg_catalog.pg_depend d
             ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
            AND d.refobjid OPERATOR(pg_catalog.=) e.oid
            AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
            AND d.deptype OPERATOR(pg_catalog.=) 'e'
           JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) d.objid
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
          WHERE e.extname OPERATOR(pg_catalog.=) 'credential_rotate'
            AND p.proname OPERATOR(pg_catalog.=) $1::pg_catalog.text
            AND p.proargtypes[0] OPERATOR(pg_catalog.=) $2::pg_catalog.oid
            AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')
            AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
          LIMIT 1",
        &[&entry.name(), &entry.first_arg()],
    )?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

fn required(client: &mut Client, entry: Entry) -> Result<String> {
    function(client, entry)?.ok_or_else(|| {
        Error::NoExtension(format!(
            "{}() is missing or not executable by this role",
            entry.name()
        ))
    })
}

/// `credential_reencrypt` then, unless dry, `credential_verify` with the new key, then COMMIT.
pub fn rotate(
    client: &mut Client,
    options: &crate::client::Options,
    keys: &RotationKeys,
    out: &crate::output::Output,
) -> Result<RotateCounts> {
    let several = keys.old.len() > 1;
    let reencrypt = required(
        client,
        if several {
            Entry::ReencryptKeys
        } else {
            Entry::Reencrypt
        },
    )?;
    let verify = required(client, Entry::Verify)?;
    let old: Vec<Zeroizing<String>> = keys.old.iter().map(|k| k.to_base64()).collect();
    let old_refs: Vec<&str> = old.iter().map(|k| k.as_str()).collect();
    let new = keys.new.to_base64();
    let (table, column) = (options.table.as_str(), options.column.as_str());
    let mut tx = begin(client, &options.lock_timeout, false)?;
    let first_arg = if several {
        "$1::pg_catalog.text[]"
    } else {
        "$1::pg_catalog.text"
    };
    let query = format!(
        "SELECT scanned, updated, already_current, empty
           FROM {reencrypt}({first_arg}, $2::pg_catalog.text, $3::pg_catalog.text,
                            $4::pg_catalog.text, $5::pg_catalog.bool)"
    );
    let spinner = out.spinner("credential_reencrypt is re-sealing in the server");
    let row = if several {
        tx.query_one(
            &query,
            &[&old_refs, &new.as_str(), &table, &column, &options.dry_run],
        )?
    } else {
        tx.query_one(
            &query,
            &[
                &old_refs[0],
                &new.as_str(),
                &table,
                &column,
                &options.dry_run,
            ],
        )?
    };
    let counts = RotateCounts {
        scanned: row.try_get(0)?,
        updated: row.try_get(1)?,
        already_current: row.try_get(2)?,
        empty: row.try_get(3)?,
        opened_by: None,
    };
    if options.dry_run {
        spinner.finish_and_clear();
        tx.rollback()?;
        return Ok(counts);
    }
    spinner.set_message("credential_verify is checking every secret");
    let check = verify_in(&mut tx, &verify, &new, table, column)?;
    spinner.finish_and_clear();
    if check.not_readable != 0 || check.malformed != 0 {
        return Err(Error::NotRotated {
            table: table.to_owned(),
            not_readable: check.not_readable,
            malformed: check.malformed,
        });
    }
    commit(tx)?;
    Ok(counts)
}

fn verify_in(
    tx: &mut postgres::Transaction<'_>,
    function: &str,
    key: &str,
    table: &str,
    column: &str,
) -> Result<VerifyCounts> {
    let row = tx.query_one(
        &format!(
            "SELECT readable, not_readable, empty, malformed
               FROM {function}($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.text)"
        ),
        &[&key, &table, &column],
    )?;
    Ok(VerifyCounts {
        readable: row.try_get(0)?,
        not_readable: row.try_get(1)?,
        empty: row.try_get(2)?,
        malformed: row.try_get(3)?,
    })
}

pub fn verify(
    client: &mut Client,
    options: &crate::client::Options,
    key: &credential_rotate_core::key::Key,
) -> Result<VerifyCounts> {
    let function = required(client, Entry::Verify)?;
    let key = key.to_base64();
    let mut tx = begin(client, &options.lock_timeout, true)?;
    let counts = verify_in(&mut tx, &function, &key, &options.table, &options.column)?;
    tx.rollback()?;
    Ok(counts)
}

pub fn census(
    client: &mut Client,
    options: &crate::client::Options,
    keys: &[credential_rotate_core::key::Key],
) -> Result<CensusCounts> {
    let function = required(client, Entry::Census)?;
    let texts: Vec<Zeroizing<String>> = keys.iter().map(|k| k.to_base64()).collect();
    let refs: Vec<&str> = texts.iter().map(|k| k.as_str()).collect();
    let mut tx = begin(client, &options.lock_timeout, true)?;
    let rows = tx.query(
        &format!(
            "SELECT key_fingerprint, status, rows
               FROM {function}($1::pg_catalog.text[], $2::pg_catalog.text, $3::pg_catalog.text)"
        ),
        &[&refs, &options.table, &options.column],
    )?;
    tx.rollback()?;
    let mut counts = CensusCounts::default();
    for row in rows {
        let (fingerprint, status, n): (Option<String>, String, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        match (fingerprint, status.as_str()) {
            (Some(_), _) => counts.readable.push(n),
            (None, "not_readable") => counts.not_readable = n,
            (None, "empty") => counts.empty = n,
            (None, _) => counts.malformed = n,
        }
    }
    Ok(counts)
}
