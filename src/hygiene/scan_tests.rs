use super::*;

fn kinds(text: &str) -> Vec<(Kind, String)> {
    tokens(text.as_bytes(), true)
        .into_iter()
        .map(|t| (t.kind, text[t.content].to_owned()))
        .collect()
}

fn literals(text: &str, standard: bool) -> Vec<String> {
    tokens(text.as_bytes(), standard)
        .into_iter()
        .filter(|t| matches!(t.kind, Kind::Literal(_)))
        .map(|t| text[t.content].to_owned())
        .collect()
}

#[test]
fn literals_of_every_quoting() {
    assert_eq!(
        literals(
            "SELECT 'a''b', E'c\\'d', N'e', U&'f' UESCAPE '!', B'01', X'1F', $$g'h$$, $q$i$$j$q$",
            true
        ),
        ["a''b", "c\\'d", "e", "f", "!", "01", "1F", "g'h", "i$$j"]
    );
    assert_eq!(literals("SELECT 'a\\'b'", false), ["a\\'b"]);
    assert_eq!(literals("SELECT 'a\\', 'b'", true), ["a\\", "b"]);
    // A constant continued after a newline keeps its quoting.
    assert_eq!(
        literals("SELECT E'a' -- c\n -- d\n'\\'b' 'c'", true),
        ["a", "\\'b", "c"]
    );
    assert_eq!(
        literals("SELECT E'a' /* c */\n'\\' 'b'", true),
        ["a", "\\", "b"]
    );
}

#[test]
fn comments_identifiers_and_parameters() {
    assert_eq!(
        kinds("/* 'x' /* 'y' */ */ f(a$$b$$, \"q\"\"r\", $12) -- 'z'\n"),
        [
            (Kind::Ident, "f".to_owned()),
            (Kind::Open, "(".to_owned()),
            (Kind::Ident, "a$$b$$".to_owned()),
            (Kind::Comma, ",".to_owned()),
            (Kind::QuotedIdent, "q\"\"r".to_owned()),
            (Kind::Comma, ",".to_owned()),
            (Kind::Param(12), "$12".to_owned()),
            (Kind::Close, ")".to_owned()),
        ]
    );
    assert_eq!(
        kinds("f(k => 1, n := 2, 1e-5, x::text, a=>b, c=>-d)")
            .into_iter()
            .filter(|(k, _)| *k == Kind::Arrow)
            .count(),
        4
    );
}

#[test]
fn unterminated_text_runs_to_the_end_and_never_panics() {
    for text in [
        "'abc", "E'ab\\", "$$abc", "$q$abc$", "\"abc", "/* abc", "U&'", "'", "$", "e'", "1e+",
    ] {
        let toks = tokens(text.as_bytes(), true);
        for t in &toks {
            assert!(
                t.span.end <= text.len() && t.content.end <= text.len(),
                "{text}"
            );
            assert!(t.content.start <= t.content.end, "{text}");
        }
    }
    assert_eq!(literals("SELECT 'abc", true), ["abc"]);
    assert_eq!(literals("SELECT $x$abc$", true), ["abc$"]);
}

#[test]
fn unquoting_maps_every_byte_back_to_its_source() {
    let text = "E'a''b\\'c\\\\d\\ne'";
    let token = &tokens(text.as_bytes(), true)[0];
    let (bytes, spans) = unquote(text.as_bytes(), token);
    assert_eq!(bytes, b"a'b'c\\d\\ne");
    assert_eq!(spans[1], 3..5);
    assert_eq!(spans[3], 6..8);
    assert_eq!(spans.len(), bytes.len());
}
