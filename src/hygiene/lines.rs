//! Masking inside the fields of a log line: a statement's text where the line quotes it, the
//! values of bound parameters (`DETAIL:  parameters: $1 = '…'`), and pgaudit's `AUDIT:` rows
//! (a CSV record whose statement and parameter fields are CSV-quoted). Every rewrite keeps the
//! field's length, so it is done in the buffer Postgres formatted, without allocating there.

use std::ops::Range;

use super::mask::{self, Plan};

/// Applies `plan` (made for `original`) at every place `field` quotes `original` verbatim.
pub fn mask_quoted_statement(field: &mut [u8], original: &[u8], plan: &Plan) {
    if original.is_empty() || plan.ranges.is_empty() {
        return;
    }
    let mut at = 0;
    while let Some(offset) = find(&field[at..], original) {
        let start = at + offset;
        for range in &plan.ranges {
            if let Some(bytes) = field.get_mut(start + range.start..start + range.end) {
                bytes.fill(b'*');
            }
        }
        at = start + original.len();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    let first = needle[0];
    (0..=haystack.len() - needle.len())
        .find(|&i| haystack[i] == first && haystack[i..].starts_with(needle))
}

/// Masks the values of the parameters `shows` refuses in a list as Postgres logs it
/// (`$1 = 'value', $2 = NULL, …`; quotes in a value doubled, a long value cut with `...`).
/// The list is found by its first `$n = `, whatever (translated) words precede it. Text after
/// it that does not follow the format is masked whole: it cannot be told from a value.
pub fn mask_parameters(field: &mut [u8], shows: impl Fn(u32) -> bool) {
    let Some(mut i) = (0..field.len()).find(|&i| parameter_at(field, i).is_some()) else {
        return;
    };
    while i < field.len() {
        let Some((n, value_start)) = parameter_at(field, i) else {
            field[i..].fill(b'*');
            return;
        };
        let value_end = if field[value_start..].starts_with(b"NULL") {
            value_start + 4
        } else if field.get(value_start) == Some(&b'\'') {
            let mut j = value_start + 1;
            loop {
                match field.get(j) {
                    None => break j,
                    Some(b'\'') if field.get(j + 1) == Some(&b'\'') => j += 2,
                    Some(b'\'') => break j + 1,
                    Some(_) => j += 1,
                }
            }
        } else {
            field[value_start..].fill(b'*');
            return;
        };
        let value_end = value_end.min(field.len());
        if !shows(n) && field.get(value_start) == Some(&b'\'') {
            let body_end = if value_end > value_start + 1 && field[value_end - 1] == b'\'' {
                value_end - 1
            } else {
                value_end
            };
            field[value_start + 1..body_end].fill(b'*');
        }
        if field[value_end..].starts_with(b", $") {
            i = value_end + 2;
        } else {
            return;
        }
    }
}

/// Masks every value of an auto_explain plan's `Query Parameters` (PostgreSQL 16 and later log
/// them with the plan): a nested statement's parameters may be PL/pgSQL variables holding keys,
/// which its text names, not numbers.
pub fn mask_plan_parameters(message: &mut [u8]) {
    if let Some(at) = find(message, b"Query Parameters") {
        mask_parameters(&mut message[at..], |_| false);
    }
}

/// At `i`, `$n = ` : the parameter's number and where its value starts.
fn parameter_at(field: &[u8], i: usize) -> Option<(u32, usize)> {
    if field.get(i) != Some(&b'$') {
        return None;
    }
    let digits = field[i + 1..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 9 {
        return None;
    }
    let end = i + 1 + digits;
    if !field[end..].starts_with(b" = ") {
        return None;
    }
    let n = std::str::from_utf8(&field[i + 1..end]).ok()?.parse().ok()?;
    Some((n, end + 3))
}

/// The fields of a CSV record: each one's span, with its enclosing quotes if quoted.
fn csv_fields(record: &[u8]) -> Vec<Range<usize>> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut quoted = false;
    while i < record.len() {
        match record[i] {
            b'"' if quoted && record.get(i + 1) == Some(&b'"') => i += 1,
            b'"' if quoted => quoted = false,
            b'"' if i == start => quoted = true,
            b',' if !quoted => {
                fields.push(start..i);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    fields.push(start..record.len());
    fields
}

/// A CSV field's value, with the span of the field each of its bytes came from.
fn csv_unquote(field: &[u8], at: usize) -> (Vec<u8>, Vec<Range<usize>>) {
    let mut bytes = Vec::with_capacity(field.len());
    let mut spans = Vec::with_capacity(field.len());
    if field.first() != Some(&b'"') {
        bytes.extend_from_slice(field);
        spans.extend((0..field.len()).map(|i| at + i..at + i + 1));
        return (bytes, spans);
    }
    let body = &field[1..field.len().saturating_sub(1).max(1)];
    let mut i = 0;
    while i < body.len() {
        let width = if body[i] == b'"' && body.get(i + 1) == Some(&b'"') {
            2
        } else {
            1
        };
        bytes.push(body[i]);
        spans.push(at + 1 + i..at + 1 + i + width);
        i += width;
    }
    (bytes, spans)
}

/// What to do with one `AUDIT:` row's statement and its parameters.
pub enum AuditRule {
    /// A statement naming a key-taking function: mask as planned.
    Plan(Plan),
    /// A statement known to have passed keys (a wrapper): every parameter value masked.
    AllParameters,
    Untouched,
}

/// The statement field's value of a pgaudit row (`AUDIT: type,id,subid,class,command,
/// object type,object name,statement,parameters[,rows]`), if `message` is one.
pub fn audit_statement(message: &[u8]) -> Option<Vec<u8>> {
    let record = message.strip_prefix(b"AUDIT: ")?;
    let fields = csv_fields(record);
    let statement = fields.get(7)?;
    Some(csv_unquote(&record[statement.clone()], statement.start).0)
}

/// Masks a pgaudit row in place by `rule`, made for its statement field.
pub fn mask_audit_row(message: &mut [u8], rule: &AuditRule) {
    const PREFIX: usize = b"AUDIT: ".len();
    if !message.starts_with(b"AUDIT: ") {
        return;
    }
    let record = &message[PREFIX..];
    let fields = csv_fields(record);
    let (Some(statement), Some(parameters)) = (fields.get(7).cloned(), fields.get(8).cloned())
    else {
        return;
    };
    let mut targets: Vec<Range<usize>> = Vec::new();
    if let AuditRule::Plan(plan) = rule {
        let (_, spans) = csv_unquote(&record[statement.clone()], statement.start);
        for range in &plan.ranges {
            if let (Some(first), Some(last)) = (spans.get(range.start), spans.get(range.end - 1)) {
                targets.push(first.start..last.end);
            }
        }
    }
    let (list, list_spans) = csv_unquote(&record[parameters.clone()], parameters.start);
    if !matches!(
        &list[..],
        b"<none>" | b"<not logged>" | b"<previously logged>"
    ) {
        for (i, value) in csv_fields(&list).into_iter().enumerate() {
            let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let hide = match rule {
                AuditRule::Plan(plan) => !plan.shows_param(n),
                AuditRule::AllParameters => true,
                AuditRule::Untouched => false,
            };
            let mut body = value;
            if list.get(body.start) == Some(&b'"') && body.len() >= 2 {
                body = body.start + 1..body.end - 1;
            }
            if hide && !body.is_empty() {
                targets.push(list_spans[body.start].start..list_spans[body.end - 1].end);
            }
        }
    }
    for target in targets {
        if let Some(bytes) = message.get_mut(PREFIX + target.start..PREFIX + target.end) {
            bytes.fill(b'*');
        }
    }
}

/// Masks every occurrence of each secret in `field`.
pub fn mask_secrets<'a>(field: &mut [u8], secrets: impl IntoIterator<Item = &'a [u8]>) {
    for secret in secrets {
        mask::mask_occurrences(field, secret);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(detail: &str, shows: impl Fn(u32) -> bool) -> String {
        let mut bytes = detail.as_bytes().to_vec();
        mask_parameters(&mut bytes, shows);
        String::from_utf8(bytes).unwrap() // ok: only ASCII is written
    }

    #[test]
    fn parameter_values() {
        assert_eq!(
            params(
                "parameters: $1 = 'k1', $2 = 'it''s', $3 = NULL, $4 = 't'",
                |n| n >= 3
            ),
            "parameters: $1 = '**', $2 = '*****', $3 = NULL, $4 = 't'"
        );
        assert_eq!(
            params("Parameter: $1 = 'abc...'", |_| false),
            "Parameter: $1 = '******'"
        );
        assert_eq!(
            params("no parameters here", |_| false),
            "no parameters here"
        );
        // Not the format: the rest is masked.
        assert_eq!(params("$1 = 'a', $2 = x y", |_| true), "$1 = 'a', $2 = ***");
        assert_eq!(
            params("$1 = 'unterminated", |_| false),
            "$1 = '************"
        );
    }

    #[test]
    fn plan_parameters() {
        let mut message =
            b"duration: 1 ms  plan:\nQuery Text: SELECT f($1)\nQuery Parameters: $1 = 'k'\nResult"
                .to_vec();
        mask_plan_parameters(&mut message);
        assert!(message.ends_with(b"Query Parameters: $1 = '*'\nResult"));
    }

    #[test]
    fn audit_rows() {
        let row = "AUDIT: SESSION,1,1,READ,SELECT,,,\"SELECT credential_verify($1, target_table => $2), 'x'\",\"k1,\"\"t,2\"\"\",1";
        let statement = audit_statement(row.as_bytes()).unwrap(); // ok: an AUDIT row
        assert_eq!(
            statement,
            b"SELECT credential_verify($1, target_table => $2), 'x'"
        );
        let plan = mask::plan(&statement, true).unwrap(); // ok: names a key-taking function
        let mut bytes = row.as_bytes().to_vec();
        mask_audit_row(&mut bytes, &AuditRule::Plan(plan));
        assert_eq!(
            String::from_utf8(bytes).unwrap(), // ok: ASCII
            "AUDIT: SESSION,1,1,READ,SELECT,,,\"SELECT credential_verify($1, target_table => $2), 'x'\",\"**,\"\"t,2\"\"\",1"
        );
        let mut bytes = row.as_bytes().to_vec();
        mask_audit_row(&mut bytes, &AuditRule::AllParameters);
        assert!(String::from_utf8(bytes)
            .unwrap()
            .ends_with(",\"**,\"\"***\"\"\",1")); // ok: ASCII

        let row = "AUDIT: SESSION,2,1,FUNCTION,EXECUTE,FUNCTION,public.credential_verify,\"SELECT credential_verify('key', 't')\",<none>";
        let statement = audit_statement(row.as_bytes()).unwrap(); // ok: an AUDIT row
        let plan = mask::plan(&statement, true).unwrap(); // ok: names one
        let mut bytes = row.as_bytes().to_vec();
        mask_audit_row(&mut bytes, &AuditRule::Plan(plan));
        assert!(String::from_utf8(bytes)
            .unwrap()
            .ends_with("credential_verify('***', 't')\",<none>")); // ok: ASCII
    }

    #[test]
    fn a_statement_quoted_in_a_line() {
        let original = b"SELECT credential_verify('key')";
        let plan = mask::plan(original, true).unwrap(); // ok: names one
        let mut line = b"duration: 1 ms  statement: SELECT credential_verify('key') x SELECT credential_verify('key')".to_vec();
        mask_quoted_statement(&mut line, original, &plan);
        assert_eq!(
            &line[..],
            b"duration: 1 ms  statement: SELECT credential_verify('***') x SELECT credential_verify('***')"
        );
    }
}
