//! The lexer of [`super::scan`] against Postgres' own (`core_yylex`, the lexer of the raw
//! parser and of `pg_stat_statements`): on every text Postgres accepts, both must find the
//! same string constants at the same byte ranges, with `standard_conforming_strings` on and
//! off. A literal whose end the two disagreed on is exactly where a mask could stop short.

#[pgrx::pg_schema]
mod tests {
    use std::ffi::{CStr, CString};

    use pgrx::pg_sys;
    use pgrx::prelude::*;

    use crate::hygiene::scan::{self, Kind};

    /// Whether a token starting with `bytes` is a string constant. (`N'…'` is two tokens to
    /// Postgres: the keyword `NCHAR` for the `N`, then an ordinary string.)
    fn starts_literal(bytes: &[u8]) -> bool {
        match bytes {
            [b'\'', ..] => true,
            [b'e' | b'E' | b'b' | b'B' | b'x' | b'X', b'\'', ..] => true,
            [b'u' | b'U', b'&', b'\'', ..] => true,
            // `$$` or `$tag$`; a `$` that opens no tag is a token of its own.
            [b'$', rest @ ..] => {
                let tag = rest
                    .iter()
                    .enumerate()
                    .take_while(|&(i, &b)| {
                        b.is_ascii_alphabetic()
                            || b == b'_'
                            || b >= 0x80
                            || (i > 0 && b.is_ascii_digit())
                    })
                    .count();
                rest.get(tag) == Some(&b'$')
            }
            _ => false,
        }
    }

    /// The byte ranges of the string constants Postgres' lexer finds in `text`; `None` when it
    /// refuses the text. The length of a token is found as pg_stat_statements finds it: the
    /// lexer ends each token with a NUL in its copy of the text.
    fn postgres_literals(text: &str) -> Option<Vec<(usize, usize)>> {
        let c_text = CString::new(text).ok()?;
        PgTryBuilder::new(|| {
            let mut literals = Vec::new();
            // SAFETY: the scanner is used as pg_stat_statements uses it, on a NUL-terminated
            // text that outlives it; `extra` stays in place while the scanner runs.
            unsafe {
                let mut extra = pg_sys::core_yy_extra_type::default();
                let scanner = pg_sys::scanner_init(
                    c_text.as_ptr(),
                    &mut extra,
                    &raw const pg_sys::ScanKeywords,
                    (&raw const pg_sys::ScanKeywordTokens).cast(),
                );
                extra.escape_string_warning = false;
                loop {
                    let mut value = pg_sys::core_YYSTYPE::default();
                    let mut location = 0;
                    if pg_sys::core_yylex(&mut value, &mut location, scanner) == 0 {
                        break;
                    }
                    let start = usize::try_from(location).unwrap_or(0);
                    let len = CStr::from_ptr(extra.scanbuf.add(start)).to_bytes().len();
                    if starts_literal(&text.as_bytes()[start..]) {
                        literals.push((start, start + len));
                    }
                }
                pg_sys::scanner_finish(scanner);
            }
            Some(literals)
        })
        .catch_others(|_| None)
        .execute()
    }

    /// Our string constants, as Postgres counts them: `'a'` and `'b'` separated by white
    /// space with a newline are one constant to it (and two tokens to us, each masked on its
    /// own).
    fn our_literals(text: &str, standard: bool) -> Vec<(usize, usize)> {
        let bytes = text.as_bytes();
        let mut literals: Vec<(usize, usize)> = Vec::new();
        for t in scan::tokens(bytes, standard) {
            if !matches!(t.kind, Kind::Literal(_)) {
                continue;
            }
            let (start, end) = match bytes[t.span.start] {
                b'n' | b'N' => (t.span.start + 1, t.span.end),
                _ => (t.span.start, t.span.end),
            };
            if let Some(last) = literals.last_mut() {
                if bytes[last.0] != b'$' && scan::continuation(bytes, last.1) == Some(start) {
                    last.1 = end;
                    continue;
                }
            }
            literals.push((start, end));
        }
        literals
    }

    fn compare(text: &str, standard: bool) -> bool {
        match postgres_literals(text) {
            Some(theirs) => {
                assert_eq!(
                    our_literals(text, standard),
                    theirs,
                    "{text:?} (standard_conforming_strings {standard})"
                );
                true
            }
            None => false,
        }
    }

    const STATEMENTS: &[&str] = &[
        "SELECT * FROM credential_reencrypt('a''b', E'c\\'d\\\\', 'credential_profiles')",
        "SELECT credential_verify(N'k', U&'d\\0061t' UESCAPE '!', B'01', X'1F')",
        "SELECT $$a'b$$, $q$ $$ $q$, $1, a$b$, 'x' 'y', 'x'\n'y'",
        "DO $do$ BEGIN EXECUTE 'SELECT credential_verify(''k'')'; END $do$",
        "SELECT /* 'a' /* 'b' */ */ 'c' -- 'd'\n, 'e'",
        "SELECT 'ä', E'\\xC3\\xA4', \"q\"\"'\", U&\"a'\"",
        "SELECT ARRAY['k1','k2'], '{k1,k2}'::text[], 1e-5, .5",
        "SELECT f(k => 'a', n := 'b', x=>-1)",
    ];

    #[pg_test]
    fn string_constants_are_found_where_postgres_finds_them() {
        for standard in [true, false] {
            Spi::run(&format!("SET standard_conforming_strings = {standard}")).unwrap(); // ok: a valid setting
            for text in STATEMENTS {
                // Without standard strings Postgres refuses U&'' constants.
                assert!(
                    compare(text, standard) || !standard,
                    "Postgres refused {text:?}"
                );
            }
            // Random texts from the characters that matter to a lexer: every one Postgres
            // accepts must split the same way.
            let pieces: &[&str] = &[
                "'", "''", "E'", "e'", "N'", "B'", "X'", "U&'", "U&\"", "$$", "$a$", "$1", "\\",
                "\\'", "\"", "--", "/*", "*/", "\n", " ", "a", "ä", ",", "(", ")", "a$b", "0",
                "1.5e", "=>", ":=", "::", ";", "'k'", "-", "\r", "\t", "--c\n", "$b$", "b",
            ];
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let mut accepted = 0;
            for _ in 0..4000 {
                let mut text = String::from("SELECT ");
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                for _ in 0..(state % 12) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    text.push_str(pieces[(state % pieces.len() as u64) as usize]);
                }
                if compare(&text, standard) {
                    accepted += 1;
                }
            }
            assert!(
                accepted > 500,
                "too few texts accepted ({accepted}) to compare"
            );
        }
        Spi::run("RESET standard_conforming_strings").unwrap(); // ok: a valid setting
    }
}
