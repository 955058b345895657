//! What the program prints: the one summary line (or one JSON object with `--json`) on
//! standard output, notes and errors on standard error, and a progress bar on a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::error::Error;

/// The counts of a rotation (or a dry run), as `credential_reencrypt` returns them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotateCounts {
    pub scanned: i64,
    pub updated: i64,
    pub already_current: i64,
    pub empty: i64,
    /// Rows each old key opened, in the order given (client mode only).
    pub opened_by: Option<Vec<i64>>,
}

/// The counts of a verification, as `credential_verify` returns them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyCounts {
    pub readable: i64,
    pub not_readable: i64,
    pub empty: i64,
    pub malformed: i64,
}

/// A census: rows each key opens (in the order given), then the rest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CensusCounts {
    pub readable: Vec<i64>,
    pub not_readable: i64,
    pub empty: i64,
    pub malformed: i64,
}

/// Where output goes and in which form.
pub struct Output {
    pub json: bool,
    pub quiet: bool,
}

impl Output {
    /// A note for a person (the mode chosen, the keys' fingerprints): standard error, never
    /// with `--quiet`.
    pub fn note(&self, text: &str) {
        if !self.quiet {
            eprintln!("credential-rotate: {text}");
        }
    }

    /// The last line of a successful run.
    pub fn result(&self, line: String, value: Value) {
        if self.json {
            println!("{value}");
        } else {
            println!("{line}");
        }
    }

    /// The error of a failed run: always on standard error; with `--json` also as an object
    /// on standard output, so that a pipeline reads one JSON value either way.
    pub fn error(&self, error: &Error) {
        eprintln!("credential-rotate: {error}");
        if self.json {
            println!(
                "{}",
                json!({"ok": false, "exit_code": error.exit_code(), "error": error.to_string()})
            );
        }
    }

    /// A progress bar over `total` rows (or a counter when the total is unknown), drawn on
    /// standard error only when it is a terminal and neither `--json` nor `--quiet` was given.
    pub fn progress(&self, total: Option<u64>) -> ProgressBar {
        if self.json || self.quiet || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = match total {
            Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                .with_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {human_pos}/{human_len} rows, {rate}, ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .with_key("rate", rate)
                    .progress_chars("=> "),
                ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template("{spinner} {msg} {human_pos} rows, {rate}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner())
                    .with_key("rate", rate),
            ),
        };
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A spinner with the elapsed time, for work the server does in one statement (extension
    /// mode); drawn under the same conditions as [`Output::progress`].
    pub fn spinner(&self, message: &'static str) -> ProgressBar {
        if !self.shows_progress() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// Whether a progress bar would be drawn (the exact row count is worth a count(*) then).
    pub fn shows_progress(&self) -> bool {
        !self.json && !self.quiet && std::io::stderr().is_terminal()
    }
}

/// Rows per second, whole.
fn rate(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{:.0} rows/s", state.per_sec());
}

/// `scanned=N updated=M already_current=C empty=E mode=…`, and the JSON form.
pub fn rotate_result(
    c: &RotateCounts,
    mode: &str,
    dry_run: bool,
    keys: &KeysShown,
    table: &str,
) -> (String, Value) {
    let mut line = format!(
        "scanned={} updated={} already_current={} empty={} mode={mode}",
        c.scanned, c.updated, c.already_current, c.empty
    );
    if dry_run {
        line.push_str(" dry_run=true");
    }
    let value = json!({
        "ok": true,
        "command": "rotate",
        "mode": mode,
        "dry_run": dry_run,
        "table": table,
        "scanned": c.scanned,
        "updated": c.updated,
        "already_current": c.already_current,
        "empty": c.empty,
        "old_key_fingerprints": keys.old,
        "new_key_fingerprint": keys.new,
        "opened_by": c.opened_by,
    });
    (line, value)
}

pub fn verify_result(
    c: &VerifyCounts,
    mode: &str,
    fingerprint: &str,
    table: &str,
) -> (String, Value) {
    let line = format!(
        "readable={} not_readable={} empty={} malformed={} mode={mode}",
        c.readable, c.not_readable, c.empty, c.malformed
    );
    let value = json!({
        "ok": true,
        "command": "verify",
        "mode": mode,
        "table": table,
        "key_fingerprint": fingerprint,
        "readable": c.readable,
        "not_readable": c.not_readable,
        "empty": c.empty,
        "malformed": c.malformed,
    });
    (line, value)
}

/// One `key=<fingerprint> readable=N` line per key, then the rest on the last line.
pub fn census_result(
    c: &CensusCounts,
    mode: &str,
    fingerprints: &[String],
    table: &str,
) -> (String, Value) {
    let mut lines: Vec<String> = fingerprints
        .iter()
        .zip(&c.readable)
        .map(|(f, n)| format!("key={f} readable={n}"))
        .collect();
    lines.push(format!(
        "not_readable={} empty={} malformed={} mode={mode}",
        c.not_readable, c.empty, c.malformed
    ));
    let keys: Vec<Value> = fingerprints
        .iter()
        .zip(&c.readable)
        .map(|(f, n)| json!({"key_fingerprint": f, "readable": n}))
        .collect();
    let value = json!({
        "ok": true,
        "command": "census",
        "mode": mode,
        "table": table,
        "keys": keys,
        "not_readable": c.not_readable,
        "empty": c.empty,
        "malformed": c.malformed,
    });
    (lines.join("\n"), value)
}

/// The keys of a run by fingerprint (the extension's `credential_key_fingerprint`).
pub struct KeysShown {
    pub old: Vec<String>,
    pub new: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_is_the_runbook_s() {
        let c = RotateCounts {
            scanned: 10,
            updated: 7,
            already_current: 2,
            empty: 1,
            opened_by: Some(vec![7]),
        };
        let keys = KeysShown {
            old: vec!["a".into()],
            new: "b".into(),
        };
        let (line, value) = rotate_result(&c, "client", false, &keys, "t");
        assert_eq!(
            line,
            "scanned=10 updated=7 already_current=2 empty=1 mode=client"
        );
        assert_eq!(value["updated"], 7);
        assert_eq!(value["new_key_fingerprint"], "b");
        let (line, _) = rotate_result(&c, "extension", true, &keys, "t");
        assert!(line.ends_with("mode=extension dry_run=true"), "{line}");
    }
}
