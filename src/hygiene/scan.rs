//! The tokens of a PostgreSQL statement text, as far as masking needs them: where each string
//! constant, dollar-quoted string, identifier, parameter, comment and bracket starts and ends.
//!
//! Written after PostgreSQL's own lexer (`src/backend/parser/scan.l`), which cannot be used
//! here: the masking also runs inside `emit_log_hook`, where a Postgres call that raises an
//! error would destroy the report being emitted, and the lexer raises on text it refuses (and
//! allocates with `palloc`). So this one never fails: any byte sequence is split into tokens,
//! and an unterminated literal or comment runs to the end of the text, as far as Postgres would
//! have read it before refusing. A `#[pg_test]` checks its literal boundaries against
//! `core_yylex` on the same texts.
//!
//! It works on bytes. Every server encoding keeps ASCII bytes for ASCII characters only (the
//! client-only encodings SJIS, BIG5, GBK, UHC and GB18030 never reach the server's text), so a
//! quote, bracket or comma byte is always that character; bytes of 0x80 and above are
//! identifier characters, as in `scan.l`.

use std::ops::Range;

/// How a string constant's body is escaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quoting {
    /// `'…'`, `N'…'`, `U&'…'`: a quote is written twice. (With `standard_conforming_strings =
    /// off` plain strings scan as [`Quoting::Escape`].)
    Standard,
    /// `E'…'`: also backslash escapes.
    Escape,
    /// `$tag$…$tag$`: no escapes at all.
    Dollar,
    /// `B'…'`, `X'…'`: bit strings, which cannot hold SQL.
    Bits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A bare identifier or keyword.
    Ident,
    /// `"…"` or `U&"…"`.
    QuotedIdent,
    /// A string constant; [`Token::content`] is its body.
    Literal(Quoting),
    /// `$1`, `$2`, …
    Param(u32),
    /// `=>` or `:=`, naming an argument.
    Arrow,
    /// `(` or `[`.
    Open,
    /// `)` or `]`.
    Close,
    Comma,
    Dot,
    /// Numbers, operators, `::`, `;` and every other character.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    /// The whole token.
    pub span: Range<usize>,
    /// The body of a literal or quoted identifier (between its delimiters); else the span.
    pub content: Range<usize>,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// Identifier characters: `$` continues an identifier (`a$b`), so `a$$b$$` is one identifier,
/// never a dollar quote.
fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

fn is_dollar_tag_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

fn is_operator_char(b: u8) -> bool {
    b"~!@#^&|`?+-*/%<>=".contains(&b)
}

/// The tokens of `text`, comments and white space left out. `standard_strings` is the
/// session's `standard_conforming_strings`: off, a backslash escapes the next character in
/// plain `'…'` strings too.
pub fn tokens(text: &[u8], standard_strings: bool) -> Vec<Token> {
    let mut lexer = Lexer {
        text,
        pos: 0,
        standard_strings,
        continued: None,
    };
    let mut out = Vec::new();
    while let Some(token) = lexer.next_token() {
        out.push(token);
    }
    out
}

/// Where the string constant ending at `end` (just after its closing quote) continues, if
/// it does: the position of the continuing quote. For the check against Postgres' scanner.
#[cfg(any(test, feature = "pg_test"))]
pub fn continuation(text: &[u8], end: usize) -> Option<usize> {
    Lexer {
        text,
        pos: end,
        standard_strings: true,
        continued: None,
    }
    .continuation(end)
}

struct Lexer<'a> {
    text: &'a [u8],
    pos: usize,
    standard_strings: bool,
    /// Where a string constant goes on after a line break (`'a'` newline `'b'` is one
    /// constant to Postgres, `E'…'`'s escapes included), and its quoting.
    continued: Option<(usize, Quoting)>,
}

impl Lexer<'_> {
    fn at(&self, i: usize) -> Option<u8> {
        self.text.get(i).copied()
    }

    fn starts_with(&self, i: usize, s: &[u8]) -> bool {
        self.text.get(i..).is_some_and(|t| t.starts_with(s))
    }

    fn skip_space_and_comments(&mut self) {
        loop {
            match self.at(self.pos) {
                Some(b) if is_space(b) => self.pos += 1,
                Some(b'-') if self.at(self.pos + 1) == Some(b'-') => {
                    self.pos = self.end_of_line(self.pos);
                }
                Some(b'/') if self.at(self.pos + 1) == Some(b'*') => {
                    // Block comments nest.
                    let mut depth = 0usize;
                    while self.pos < self.text.len() {
                        if self.starts_with(self.pos, b"/*") {
                            depth += 1;
                            self.pos += 2;
                        } else if self.starts_with(self.pos, b"*/") {
                            depth -= 1;
                            self.pos += 2;
                            if depth == 0 {
                                break;
                            }
                        } else {
                            self.pos += 1;
                        }
                    }
                }
                _ => return,
            }
        }
    }

    fn next_token(&mut self) -> Option<Token> {
        self.skip_space_and_comments();
        let start = self.pos;
        let b = self.at(start)?;
        let next = self.at(start + 1);
        let after = self.at(start + 2);
        if let Some((at, quoting)) = self.continued.take() {
            if at == start {
                return Some(self.quoted(start, 1, quoting));
            }
        }
        let token = match b {
            b'\'' => {
                let quoting = if self.standard_strings {
                    Quoting::Standard
                } else {
                    Quoting::Escape
                };
                self.quoted(start, 1, quoting)
            }
            b'e' | b'E' if next == Some(b'\'') => self.quoted(start, 2, Quoting::Escape),
            b'n' | b'N' if next == Some(b'\'') => {
                let quoting = if self.standard_strings {
                    Quoting::Standard
                } else {
                    Quoting::Escape
                };
                self.quoted(start, 2, quoting)
            }
            b'b' | b'B' | b'x' | b'X' if next == Some(b'\'') => {
                self.quoted(start, 2, Quoting::Bits)
            }
            b'u' | b'U' if next == Some(b'&') && after == Some(b'\'') => {
                self.quoted(start, 3, Quoting::Standard)
            }
            b'u' | b'U' if next == Some(b'&') && after == Some(b'"') => self.quoted_ident(start, 3),
            b'"' => self.quoted_ident(start, 1),
            b'$' if next.is_some_and(|d| d.is_ascii_digit()) => {
                let mut end = start + 1;
                let mut n: u32 = 0;
                while let Some(d) = self.at(end).filter(u8::is_ascii_digit) {
                    n = n.saturating_mul(10).saturating_add(u32::from(d - b'0'));
                    end += 1;
                }
                self.pos = end;
                self.token(Kind::Param(n), start)
            }
            b'$' => match self.dollar_tag(start) {
                Some(tag_end) => self.dollar_quoted(start, tag_end),
                None => {
                    self.pos += 1;
                    self.token(Kind::Other, start)
                }
            },
            _ if is_ident_start(b) => {
                let mut end = start + 1;
                while self.at(end).is_some_and(is_ident_cont) {
                    end += 1;
                }
                self.pos = end;
                self.token(Kind::Ident, start)
            }
            _ if b.is_ascii_digit() || (b == b'.' && next.is_some_and(|d| d.is_ascii_digit())) => {
                self.number(start)
            }
            b'(' | b'[' => self.single(Kind::Open, start),
            b')' | b']' => self.single(Kind::Close, start),
            b',' => self.single(Kind::Comma, start),
            b'.' => self.single(Kind::Dot, start),
            b':' if next == Some(b'=') => {
                self.pos += 2;
                self.token(Kind::Arrow, start)
            }
            b':' if next == Some(b':') => {
                self.pos += 2;
                self.token(Kind::Other, start)
            }
            _ if is_operator_char(b) => self.operator(start),
            _ => self.single(Kind::Other, start),
        };
        Some(token)
    }

    fn token(&self, kind: Kind, start: usize) -> Token {
        Token {
            kind,
            span: start..self.pos,
            content: start..self.pos,
        }
    }

    fn single(&mut self, kind: Kind, start: usize) -> Token {
        self.pos = start + 1;
        self.token(kind, start)
    }

    /// A string constant whose body starts `open` bytes after `start`.
    fn quoted(&mut self, start: usize, open: usize, quoting: Quoting) -> Token {
        let body = start + open;
        let mut i = body;
        let end_of_body = loop {
            match self.at(i) {
                None => break i,
                Some(b'\\') if quoting == Quoting::Escape => i += 2,
                // A bit string has no doubled quotes: `B'01'''` is `B'01'` then `''`.
                Some(b'\'') if quoting != Quoting::Bits && self.at(i + 1) == Some(b'\'') => i += 2,
                Some(b'\'') => break i,
                Some(_) => i += 1,
            }
        };
        let end_of_body = end_of_body.min(self.text.len());
        self.pos = (end_of_body + 1).min(self.text.len());
        self.continued = self.continuation(self.pos).map(|at| (at, quoting));
        Token {
            kind: Kind::Literal(quoting),
            span: start..self.pos,
            content: body.min(self.text.len())..end_of_body,
        }
    }

    /// After a closing quote at `end - 1`: the opening quote that continues the constant, if
    /// any (`scan.l`'s `quotecontinue`: white space holding a newline, `--` comments allowed
    /// after it, then a quote).
    fn continuation(&self, end: usize) -> Option<usize> {
        let mut i = end;
        loop {
            match self.at(i) {
                Some(b' ' | b'\t' | b'\x0c') => i += 1,
                Some(b'-') if self.at(i + 1) == Some(b'-') => i = self.end_of_line(i),
                Some(b'\n' | b'\r') => break,
                _ => return None,
            }
        }
        loop {
            match self.at(i) {
                Some(b) if is_space(b) => i += 1,
                Some(b'-') if self.at(i + 1) == Some(b'-') => i = self.end_of_line(i),
                Some(b'\'') => return Some(i),
                _ => return None,
            }
        }
    }

    fn end_of_line(&self, mut i: usize) -> usize {
        while self.at(i).is_some_and(|b| b != b'\n' && b != b'\r') {
            i += 1;
        }
        i
    }

    fn quoted_ident(&mut self, start: usize, open: usize) -> Token {
        let body = start + open;
        let mut i = body;
        let end_of_body = loop {
            match self.at(i) {
                None => break i,
                Some(b'"') if self.at(i + 1) == Some(b'"') => i += 2,
                Some(b'"') => break i,
                Some(_) => i += 1,
            }
        };
        self.pos = (end_of_body + 1).min(self.text.len());
        Token {
            kind: Kind::QuotedIdent,
            span: start..self.pos,
            content: body..end_of_body,
        }
    }

    /// The end of the opening delimiter of a dollar quote at `start` (`$$` or `$tag$`).
    fn dollar_tag(&self, start: usize) -> Option<usize> {
        let mut i = start + 1;
        if self.at(i).is_some_and(is_ident_start) {
            i += 1;
            while self.at(i).is_some_and(is_dollar_tag_cont) {
                i += 1;
            }
        }
        (self.at(i) == Some(b'$')).then_some(i + 1)
    }

    fn dollar_quoted(&mut self, start: usize, tag_end: usize) -> Token {
        let tag = &self.text[start..tag_end];
        let rest = &self.text[tag_end..];
        let end_of_body = rest
            .windows(tag.len())
            .position(|w| w == tag)
            .map_or(self.text.len(), |p| tag_end + p);
        self.pos = (end_of_body + tag.len()).min(self.text.len());
        Token {
            kind: Kind::Literal(Quoting::Dollar),
            span: start..self.pos,
            content: tag_end..end_of_body,
        }
    }

    /// Digits, a fraction, an exponent with its sign, and anything that sticks to a number
    /// (`0x1F`, `1_000`, the junk Postgres would refuse): one token.
    fn number(&mut self, start: usize) -> Token {
        let mut i = start;
        while let Some(b) = self.at(i) {
            let exponent_sign = (b == b'+' || b == b'-')
                && matches!(self.at(i - 1), Some(b'e' | b'E'))
                && self.at(i + 1).is_some_and(|d| d.is_ascii_digit());
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || exponent_sign {
                i += 1;
            } else {
                break;
            }
        }
        self.pos = i;
        self.token(Kind::Other, start)
    }

    /// The longest run of operator characters, stopping before a comment start as `scan.l`
    /// does; `=>` alone names an argument.
    fn operator(&mut self, start: usize) -> Token {
        let mut i = start;
        while self.at(i).is_some_and(is_operator_char) {
            if i > start && (self.starts_with(i, b"--") || self.starts_with(i, b"/*")) {
                break;
            }
            i += 1;
        }
        // scan.l: a trailing + or - is not part of an operator made only of the other
        // characters, so `=>-1` is `=>` then `-1`.
        if !self.text[start..i]
            .iter()
            .any(|b| b"~!@#^&|`?%".contains(b))
        {
            while i > start + 1 && matches!(self.text[i - 1], b'+' | b'-') {
                i -= 1;
            }
        }
        self.pos = i.max(start + 1);
        let kind = if &self.text[start..self.pos] == b"=>" {
            Kind::Arrow
        } else {
            Kind::Other
        };
        self.token(kind, start)
    }
}

/// The body of a literal as the text it stands for (a quote written twice is one quote; in an
/// `E''` string `\'` and `\\` are one character, other escapes stay as written), with the span
/// of the source each byte came from. Masking a nested statement's literal masks those spans.
pub fn unquote(text: &[u8], token: &Token) -> (Vec<u8>, Vec<Range<usize>>) {
    let body = &text[token.content.clone()];
    let base = token.content.start;
    let mut bytes = Vec::with_capacity(body.len());
    let mut spans = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        let pair = match token.kind {
            Kind::Literal(Quoting::Standard | Quoting::Escape) if b == b'\'' => true,
            Kind::Literal(Quoting::Escape) if b == b'\\' => {
                matches!(body.get(i + 1), Some(b'\'' | b'\\'))
            }
            _ => false,
        };
        if pair && i + 1 < body.len() {
            bytes.push(body[i + 1]);
            spans.push(base + i..base + i + 2);
            i += 2;
        } else {
            bytes.push(b);
            spans.push(base + i..base + i + 1);
            i += 1;
        }
    }
    (bytes, spans)
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
