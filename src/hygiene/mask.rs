//! The masking engine: which bytes of a statement text hold a key (or a plaintext), so that
//! they can be overwritten with `*` in place. The text keeps its length, so error cursor
//! positions, `pg_stat_statements`' constant locations and every other offset into it stay
//! valid, and a buffer Postgres owns can be rewritten without reallocating it.
//!
//! Pure Rust over bytes, no allocation from Postgres and no failure: it runs inside
//! `emit_log_hook` too.

use std::ops::Range;

use super::scan::{self, Kind, Quoting, Token};

/// A function or procedure that takes a key, with its parameters in order. An argument is
/// secret when its parameter is one of [`SECRET_PARAMETERS`], when it is passed by a name the
/// function does not have (a misspelt `nw_key => …` still carries a key), or when it comes
/// after the last known parameter.
struct KeyTaking {
    name: &'static str,
    parameters: &'static [&'static str],
}

const ROTATION: &[&str] = &[
    "old_key",
    "new_key",
    "target_table",
    "secret_column",
    "dry_run",
    "touch_updated_at",
];
const BATCHED: &[&str] = &[
    "old_key",
    "new_key",
    "batch_rows",
    "target_table",
    "secret_column",
];
const BATCHED_KEYS: &[&str] = &[
    "old_keys",
    "new_key",
    "batch_rows",
    "target_table",
    "secret_column",
];
const BATCH: &[&str] = &[
    "old_keys",
    "new_key",
    "target_table",
    "secret_column",
    "batch_rows",
    "resume",
    "state",
];
const ONE_KEY: &[&str] = &["key", "target_table", "secret_column"];

const KEY_TAKING: &[KeyTaking] = &[
    KeyTaking {
        name: "credential_reencrypt",
        parameters: ROTATION,
    },
    KeyTaking {
        name: "credential_reencrypt_batched",
        parameters: BATCHED,
    },
    KeyTaking {
        name: "_credential_reencrypt_batched",
        parameters: BATCHED_KEYS,
    },
    KeyTaking {
        name: "_credential_batched_start",
        parameters: &["old_keys", "new_key", "batch_rows"],
    },
    KeyTaking {
        name: "_credential_reencrypt_batch",
        parameters: BATCH,
    },
    KeyTaking {
        name: "_credential_check_keys",
        parameters: &["old_key", "new_key"],
    },
    KeyTaking {
        name: "credential_reencrypt_value",
        parameters: &["envelope", "old_key", "new_key"],
    },
    KeyTaking {
        name: "credential_verify",
        parameters: ONE_KEY,
    },
    KeyTaking {
        name: "credential_verify_rows",
        parameters: ONE_KEY,
    },
    KeyTaking {
        name: "credential_key_census",
        parameters: &["keys", "target_table", "secret_column"],
    },
    KeyTaking {
        name: "credential_key_fingerprint",
        parameters: &["key"],
    },
    KeyTaking {
        name: "credential_encrypt",
        parameters: &["plaintext", "key"],
    },
    KeyTaking {
        name: "credential_decrypt",
        parameters: &["envelope", "key"],
    },
];

/// Parameters whose value is a key, a list of keys, or a plaintext.
const SECRET_PARAMETERS: &[&str] = &["old_key", "old_keys", "new_key", "key", "keys", "plaintext"];

/// How deep literals holding code (a `DO` body, an `EXECUTE`d string inside it) are followed.
const MAX_NESTING: usize = 4;

/// The length of a key in base64 without padding (32 bytes).
const KEY_CHARS: usize = 43;

/// Bytes the scanner of Postgres accepts inside an identifier; bytes of multibyte characters
/// count too, so `credential_decryptä` is one (other) name.
fn is_identifier_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Whether `text` holds the name of a key-taking function as a whole identifier, in any case,
/// bare, quoted or schema-qualified. Runs for every statement and every log line, so it walks
/// the text once and allocates nothing. It does not skip string literals or comments: a name
/// there counts too, the safe way to err.
pub fn names_key_taking_function(text: &[u8]) -> bool {
    // Every name contains "credential": most statements are ruled out by looking for it, one
    // comparison per byte.
    const COMMON: &[u8] = b"credential";
    let has_common = text
        .windows(COMMON.len())
        .any(|w| w[0] | 0x20 == b'c' && w.eq_ignore_ascii_case(COMMON));
    if !has_common {
        return false;
    }
    // eq_ignore_ascii_case compares the lengths first: most words cost one comparison per name.
    text.split(|&b| !is_identifier_byte(b)).any(|word| {
        KEY_TAKING
            .iter()
            .any(|f| word.eq_ignore_ascii_case(f.name.as_bytes()))
    })
}

/// What masking a statement found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Byte ranges to overwrite with `*`: bodies of literals (never their quotes).
    pub ranges: Vec<Range<usize>>,
    /// Parameters (`$n`) passed in a secret argument position.
    pub secret_params: Vec<u32>,
    /// Parameters the statement uses elsewhere.
    pub other_params: Vec<u32>,
}

impl Plan {
    /// Whether the value of `$n` may be logged: only a parameter the statement uses, and
    /// never as a key. Values bound but not referenced as `$n` (PL/pgSQL passes its variables
    /// that way) are not shown either.
    pub fn shows_param(&self, n: u32) -> bool {
        self.other_params.contains(&n) && !self.secret_params.contains(&n)
    }

    /// Overwrites the planned ranges of `text` (the text the plan was made for).
    #[cfg(test)]
    pub fn apply(&self, text: &mut [u8]) {
        for range in &self.ranges {
            if let Some(bytes) = text.get_mut(range.clone()) {
                bytes.fill(b'*');
            }
        }
    }
}

/// The masking of `text`, or `None` when it names no key-taking function (then nothing in it
/// is masked, and its parameters are all shown).
pub fn plan(text: &[u8], standard_strings: bool) -> Option<Plan> {
    if !names_key_taking_function(text) {
        return None;
    }
    let spans: Vec<Range<usize>> = (0..text.len()).map(|i| i..i + 1).collect();
    let mut plan = Plan::default();
    plan_text(text, &spans, standard_strings, 0, &mut plan);
    plan.ranges.sort_by_key(|r| r.start);
    plan.secret_params.sort_unstable();
    plan.secret_params.dedup();
    plan.other_params.sort_unstable();
    plan.other_params.dedup();
    Some(plan)
}

/// Plans `text`, a statement or the body of a literal holding one; `spans[i]` is where byte
/// `i` of it lies in the outermost text.
fn plan_text(
    text: &[u8],
    spans: &[Range<usize>],
    standard_strings: bool,
    depth: usize,
    plan: &mut Plan,
) {
    let tokens = scan::tokens(text, standard_strings);
    let mask = |content: &Range<usize>, plan: &mut Plan| {
        if let (Some(first), Some(last)) = (
            spans.get(content.start),
            content.end.checked_sub(1).and_then(|i| spans.get(i)),
        ) {
            plan.ranges.push(first.start..last.end);
        }
    };
    let mut secret_spans: Vec<Range<usize>> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if token.kind == Kind::Ident || token.kind == Kind::QuotedIdent {
            if let Some(args) = key_taking_call(text, &tokens, i) {
                secret_spans.extend(args);
            }
        }
    }
    let in_secret = |t: &Token| secret_spans.iter().any(|s| s.contains(&t.span.start));
    for token in &tokens {
        match token.kind {
            Kind::Literal(quoting) => {
                if in_secret(token) {
                    mask(&token.content, plan);
                    continue;
                }
                if quoting == Quoting::Bits {
                    continue;
                }
                let (body, body_spans) = scan::unquote(text, token);
                if depth < MAX_NESTING && names_key_taking_function(&body) {
                    // Code (a DO body, an EXECUTEd string): its own calls and literals.
                    let outer: Vec<Range<usize>> = body_spans
                        .iter()
                        .map(|s| spans[s.start].start..spans[s.end - 1].end)
                        .collect();
                    let mut inner = Plan::default();
                    plan_text(&body, &outer, standard_strings, depth + 1, &mut inner);
                    plan.ranges.extend(inner.ranges);
                } else if looks_like_a_key(&body) {
                    mask(&token.content, plan);
                }
            }
            Kind::Param(n) if depth == 0 => {
                if in_secret(token) {
                    plan.secret_params.push(n);
                } else {
                    plan.other_params.push(n);
                }
            }
            _ => {}
        }
    }
}

/// When `tokens[at]` names a key-taking function and opens its argument list, the token
/// spans (byte ranges of `text`) of its secret arguments.
fn key_taking_call(text: &[u8], tokens: &[Token], at: usize) -> Option<Vec<Range<usize>>> {
    let name = &text[tokens[at].content.clone()];
    let function = KEY_TAKING
        .iter()
        .find(|f| name.eq_ignore_ascii_case(f.name.as_bytes()))?;
    if tokens.get(at + 1).map(|t| (t.kind, &text[t.span.clone()])) != Some((Kind::Open, b"(")) {
        return None;
    }
    let mut secret = Vec::new();
    let mut depth = 0usize;
    let mut position = 0usize;
    let mut arg_start = at + 2;
    let mut i = at + 2;
    while let Some(token) = tokens.get(i) {
        let ends_arg = match token.kind {
            Kind::Open => {
                depth += 1;
                false
            }
            Kind::Close if depth > 0 => {
                depth -= 1;
                false
            }
            Kind::Close => true,
            Kind::Comma => depth == 0,
            _ => false,
        };
        if ends_arg {
            if i > arg_start && argument_is_secret(text, function, &tokens[arg_start..i], position)
            {
                secret.push(tokens[arg_start].span.start..tokens[i - 1].span.end);
            }
            if token.kind == Kind::Close {
                return Some(secret);
            }
            position += 1;
            arg_start = i + 1;
        }
        i += 1;
    }
    // No closing parenthesis: the rest of the text belongs to the last argument.
    if i > arg_start && argument_is_secret(text, function, &tokens[arg_start..], position) {
        secret.push(tokens[arg_start].span.start..text.len());
    }
    Some(secret)
}

fn argument_is_secret(text: &[u8], function: &KeyTaking, arg: &[Token], position: usize) -> bool {
    let named = match arg {
        [name, arrow, ..] if arrow.kind == Kind::Arrow => Some(&text[name.content.clone()]),
        _ => None,
    };
    let parameter = match named {
        Some(name) => function
            .parameters
            .iter()
            .chain(SECRET_PARAMETERS)
            .find(|p| name.eq_ignore_ascii_case(p.as_bytes())),
        None => function.parameters.get(position),
    };
    parameter.is_none_or(|p| SECRET_PARAMETERS.contains(p))
}

/// Whether a literal's body holds something shaped like a key: a run of at least 43 base64
/// characters (either alphabet) with both upper and lower case letters, as a random 32-byte
/// key has and names in lower case do not. Catches keys outside argument positions: a CTE, a
/// `VALUES` list, a `DO` block's variable, an array literal.
pub fn looks_like_a_key(body: &[u8]) -> bool {
    let mut run = 0usize;
    let (mut upper, mut lower) = (false, false);
    for &b in body {
        if b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_') {
            run += 1;
            upper |= b.is_ascii_uppercase();
            lower |= b.is_ascii_lowercase();
            if run >= KEY_CHARS && upper && lower {
                return true;
            }
        } else {
            run = 0;
            upper = false;
            lower = false;
        }
    }
    false
}

/// The part of a key text worth searching for: without surrounding white space (which the
/// key parser ignores) and only when long enough not to match by chance; a 32-byte key is
/// 43 characters, and nothing under 16 can hold a useful part of one.
pub fn key_core(text: &[u8]) -> Option<&[u8]> {
    let core = text.trim_ascii();
    (core.len() >= 16).then_some(core)
}

/// Overwrites every occurrence of `needle` in `text` with `*`; whether it found one.
pub fn mask_occurrences(text: &mut [u8], needle: &[u8]) -> bool {
    if needle.is_empty() || needle.len() > text.len() {
        return false;
    }
    let mut found = false;
    let mut i = 0;
    while i + needle.len() <= text.len() {
        if text[i..].starts_with(needle) {
            text[i..i + needle.len()].fill(b'*');
            found = true;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    found
}

#[cfg(test)]
#[path = "mask_tests.rs"]
mod tests;
