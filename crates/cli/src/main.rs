//! credential-rotate: the credential key rotation runbook in one command, with the
//! credential_rotate extension where it is installed (extension mode) and without it, on
//! managed PostgreSQL, with the keys kept in this process (client mode).
//!
//! - [`config`]: the runbook's environment and key files, parsed into core keys.
//! - [`connect`]: the connection string, TLS (rustls) and authentication.
//! - [`target`]: the table and column of a client-mode run, resolved and locked.
//! - [`client`]: client-mode rotation: stream, decide, stage, update, verify, commit.
//! - [`scan`]: client-mode verify and census.
//! - [`extension`]: extension mode: the extension's SQL functions, keys as parameters.
//! - [`output`]: the summary line, JSON, progress bar.
//! - [`error`]: the one error type, its messages and exit codes.

mod client;
mod config;
mod connect;
mod error;
mod extension;
mod output;
mod scan;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::{Error, Result, EXIT_OK, EXIT_REFUSED};
use crate::extension::Entry;
use crate::output::{KeysShown, Output};

/// Rotates the AES-256-GCM key sealing Freeboard's credential secrets (the runbook's
/// `npm run credentials:reencrypt`), in one transaction, refusing rather than overwriting what
/// it cannot open.
///
/// Reads DATABASE_URL (or FREEBOARD_POSTGRES_URL), CREDENTIAL_ENCRYPTION_KEY_OLD (one or more
/// keys, comma-separated), CREDENTIAL_ENCRYPTION_KEY_NEW and, for verify,
/// CREDENTIAL_ENCRYPTION_KEY. Keys are never taken as arguments: use the environment or key
/// files. Exit status: 0 done; 1 refused or failed, nothing changed; 2 usage or configuration
/// error; 3 the connection was lost during COMMIT, outcome unknown (run verify).
#[derive(Parser)]
#[command(name = "credential-rotate", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Count what a rotation would do, change nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    /// The table holding the secrets, as SQL names it (schema-qualified if need be).
    #[arg(long, global = true, default_value = "credential_profiles")]
    table: String,
    /// The column holding the secrets (jsonb, json or text).
    #[arg(long, global = true, default_value = "secret")]
    column: String,
    /// extension: the server re-seals (needs the credential_rotate extension); client: this
    /// program re-seals, the server sees only ciphertext; auto: extension if installed and
    /// executable, else client.
    #[arg(long, global = true, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    /// One JSON object on standard output instead of the summary line; no progress bar.
    #[arg(long, global = true)]
    json: bool,
    /// No notes or progress bar on standard error (errors are still printed).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// A file holding the old key (or several, comma-separated); repeatable. Instead of
    /// CREDENTIAL_ENCRYPTION_KEY_OLD.
    #[arg(long, global = true, value_name = "PATH")]
    old_key_file: Vec<PathBuf>,
    /// A file holding the new key. Instead of CREDENTIAL_ENCRYPTION_KEY_NEW.
    #[arg(long, global = true, value_name = "PATH")]
    new_key_file: Option<PathBuf>,
    /// verify: the key to check (instead of CREDENTIAL_ENCRYPTION_KEY); census: a key to count
    /// by (repeatable), besides the old and new keys.
    #[arg(long, global = true, value_name = "PATH")]
    key_file: Vec<PathBuf>,
    /// How long to wait for the table's lock before giving up (a PostgreSQL duration).
    #[arg(long, global = true, default_value = "10s")]
    lock_timeout: String,
    /// Client mode: rows fetched, decided and staged per round trip.
    #[arg(long, global = true, default_value_t = 5000, value_parser = clap::value_parser!(i32).range(1..))]
    batch_rows: i32,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Re-seal every secret under the new key (the default).
    Rotate,
    /// Count the secrets that open with CREDENTIAL_ENCRYPTION_KEY (or the new key); exit 1 if
    /// any does not.
    Verify,
    /// Count the secrets each key opens (every key given), before retiring one.
    Census,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Auto,
    Extension,
    Client,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output {
        json: cli.json,
        quiet: cli.quiet,
    };
    match run(&cli, &out) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            out.error(&error);
            ExitCode::from(error.exit_code())
        }
    }
}

fn run(cli: &Cli, out: &Output) -> Result<u8> {
    let command = cli.command.unwrap_or(Command::Rotate);
    if cli.dry_run && command != Command::Rotate {
        return Err(Error::Usage("--dry-run applies to rotate only".into()));
    }
    let options = client::Options {
        table: cli.table.clone(),
        column: cli.column.clone(),
        dry_run: cli.dry_run,
        batch_rows: cli.batch_rows,
        lock_timeout: cli.lock_timeout.clone(),
    };
    // Keys first: a wrong key is found before anything connects.
    let keys = match command {
        Command::Rotate => Keys::Rotation(config::rotation_keys(
            &cli.old_key_file,
            cli.new_key_file.as_deref(),
        )?),
        Command::Verify => Keys::One(config::verify_key(
            cli.key_file.first().map(PathBuf::as_path),
            cli.new_key_file.as_deref(),
        )?),
        Command::Census => Keys::Census(config::census_keys(
            &cli.key_file,
            &cli.old_key_file,
            cli.new_key_file.as_deref(),
        )?),
    };
    let (url, var) = config::database_url()?;
    let target = connect::parse(&url, var)?;
    drop(url);
    let mut db = connect::connect(target)?;
    let extension = choose_mode(&mut db, cli.mode, command, &keys, out)?;
    let mode = if extension { "extension" } else { "client" };

    match keys {
        Keys::Rotation(keys) => {
            let shown = KeysShown {
                old: keys.old.iter().map(|k| k.fingerprint()).collect(),
                new: keys.new.fingerprint(),
            };
            out.note(&format!(
                "old key fingerprint(s) {}; new key fingerprint {}",
                shown.old.join(", "),
                shown.new
            ));
            let counts = if extension {
                extension::rotate(&mut db, &options, &keys, out)?
            } else {
                client::rotate(&mut db, &options, &keys, out)?
            };
            if let Some(opened) = counts.opened_by.as_ref().filter(|o| o.len() > 1) {
                let by: Vec<String> = shown
                    .old
                    .iter()
                    .zip(opened)
                    .map(|(f, n)| format!("{f}: {n}"))
                    .collect();
                out.note(&format!("rows opened by each old key: {}", by.join(", ")));
            }
            let (line, value) =
                output::rotate_result(&counts, mode, cli.dry_run, &shown, &cli.table);
            out.result(line, value);
            Ok(EXIT_OK)
        }
        Keys::One(key) => {
            let fingerprint = key.fingerprint();
            out.note(&format!(
                "verifying with the key of fingerprint {fingerprint}"
            ));
            let counts = if extension {
                extension::verify(&mut db, &options, &key)?
            } else {
                scan::verify(&mut db, &options, &key, out)?.0
            };
            let (line, mut value) = output::verify_result(&counts, mode, &fingerprint, &cli.table);
            let failed = counts.not_readable != 0 || counts.malformed != 0;
            value["ok"] = (!failed).into();
            out.result(line, value);
            if failed {
                eprintln!(
                    "credential-rotate: {}",
                    Error::VerifyFailed {
                        table: cli.table.clone(),
                        not_readable: counts.not_readable,
                        malformed: counts.malformed,
                    }
                );
                return Ok(EXIT_REFUSED);
            }
            Ok(EXIT_OK)
        }
        Keys::Census(keys) => {
            let fingerprints: Vec<String> = keys.iter().map(|k| k.fingerprint()).collect();
            let counts = if extension {
                extension::census(&mut db, &options, &keys)?
            } else {
                scan::census(&mut db, &options, &keys, out)?.0
            };
            let (text, value) = output::census_result(&counts, mode, &fingerprints, &cli.table);
            out.result(text, value);
            Ok(EXIT_OK)
        }
    }
}

enum Keys {
    Rotation(config::RotationKeys),
    One(credential_rotate_core::key::Key),
    Census(Vec<credential_rotate_core::key::Key>),
}

/// Extension mode (`true`) or client mode, as asked; `auto` takes the extension when it is
/// installed and every function the command calls is executable by this role.
fn choose_mode(
    db: &mut postgres::Client,
    mode: Mode,
    command: Command,
    keys: &Keys,
    out: &Output,
) -> Result<bool> {
    let entries: Vec<Entry> = match (command, keys) {
        (Command::Rotate, Keys::Rotation(k)) if k.old.len() > 1 => {
            vec![Entry::ReencryptKeys, Entry::Verify]
        }
        (Command::Rotate, _) => vec![Entry::Reencrypt, Entry::Verify],
        (Command::Verify, _) => vec![Entry::Verify],
        (Command::Census, _) => vec![Entry::Census],
    };
    if mode == Mode::Client {
        out.note("mode=client: the keys stay in this process");
        return Ok(false);
    }
    let why = match extension::available(db, &entries)? {
        Ok(installed) if extension::hide_parameters(db)? => {
            out.note(&format!("mode=extension: credential_rotate {}", installed.version));
            return Ok(true);
        }
        Ok(_) => "the server logs every statement with its parameters (log_statement or log_min_duration_statement) and this role may not set log_parameter_max_length = 0: the keys would reach the server log".to_owned(),
        Err(why) => why,
    };
    if mode == Mode::Extension {
        return Err(Error::NoExtension(why));
    }
    out.note(&format!(
        "mode=client ({why}): the keys stay in this process"
    ));
    Ok(false)
}
