//! The jsonb fast path: the splice byte for byte against Postgres' serialiser, damaged values.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// The splice that writes a re-sealed envelope must give, byte for byte, what Postgres
    /// itself gives for the same value: checked against its iterator-and-serialiser rebuild and
    /// against `jsonb_in` of the expected text.
    #[pg_test]
    fn spliced_envelopes_are_byte_identical_to_postgres_own_serialisation() {
        use crate::container::Root;
        use crate::envelope::EncodedParts;
        use crate::jsonb::RawJsonb;
        use std::ffi::CString;

        let envelope = r#""algorithm":"aes-256-gcm","keyId":"v1","iv":"AAAAAAAAAAAAAAAA","ciphertext":"Q0NDQ0NDQ0ND","authTag":"BBBBBBBBBBBBBBBBBBBBBB==""#;
        let many: String = (0..40)
            .map(|i| format!(r#","extra{i:02}":"value {i}""#))
            .collect();
        let cases: Vec<(String, bool)> = vec![
            (format!("{{{envelope}}}"), true),
            (
                format!(
                    r#"{{{envelope},"note":"caf\u00e9 \"quoted\" \\ tab\t","ok":true,"off":false,"gone":null}}"#
                ),
                true,
            ),
            (format!(r#"{{{envelope},"clé ünïcode":"välue"}}"#), true),
            // Over 32 entries: every 32nd stores an offset instead of a length.
            (format!("{{{envelope}{many}}}"), true),
            // Numbers and nested values are padded by position: Postgres rebuilds those.
            (format!(r#"{{{envelope},"version":2}}"#), false),
            (
                format!(r#"{{{envelope},"rotatedBy":{{"who":[1,2]}}}}"#),
                false,
            ),
        ];
        for parts in [
            EncodedParts::from_text("ZZZZZZZZZZZZZZZZ", "c2hvcnQ=", "TTTTTTTTTTTTTTTTTTTTTT=="),
            EncodedParts::from_text(
                "YYYYYYYYYYYYYYYY",
                &"bG9uZ2Vy".repeat(300),
                "UUUUUUUUUUUUUUUUUUUUUU==",
            ),
        ] {
            for (text, spliced) in &cases {
                let stored = RawJsonb::from_text(&CString::new(text.as_str()).unwrap());
                let bytes = stored.container_bytes();
                let Some(Root::Object(object)) = Root::parse(&bytes) else {
                    panic!("{text}: not read as an object");
                };
                let replacements = parts.fields();
                assert_eq!(
                    object.with_strings(&replacements).is_some(),
                    *spliced,
                    "{text}"
                );
                // SAFETY: a jsonb object holding all three fields.
                let (ours, theirs) = unsafe {
                    (
                        stored.with_parts(&parts).container_bytes(),
                        stored.rebuilt_with_parts(&parts).container_bytes(),
                    )
                };
                assert_eq!(ours, theirs, "{text}");
                let text_of = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                let expected = text
                    .replace(
                        r#""iv":"AAAAAAAAAAAAAAAA""#,
                        &format!(r#""iv":"{}""#, text_of(parts.iv())),
                    )
                    .replace(
                        r#""ciphertext":"Q0NDQ0NDQ0ND""#,
                        &format!(r#""ciphertext":"{}""#, text_of(parts.ciphertext())),
                    )
                    .replace(
                        r#""authTag":"BBBBBBBBBBBBBBBBBBBBBB==""#,
                        &format!(r#""authTag":"{}""#, text_of(parts.auth_tag())),
                    );
                let parsed = RawJsonb::from_text(&CString::new(expected).unwrap());
                assert_eq!(ours, parsed.container_bytes(), "{text}");
            }
        }
    }

    /// Postgres never stores a jsonb whose lengths do not add up, so such a value can only
    /// come from a damaged page: it is refused with data_corrupted, not read past its end.
    #[pg_test]
    fn a_damaged_jsonb_value_is_refused_with_data_corrupted() {
        use crate::error::OrReport;
        use crate::jsonb::RawJsonb;
        let mut bytes = RawJsonb::from_text(c"{\"iv\":\"AAAA\"}").container_bytes();
        // One more pair than the value holds.
        bytes[0] = bytes[0].wrapping_add(1);
        assert!(crate::container::Root::parse(&bytes).is_none());
        // SAFETY: a varlena copy of the (damaged) container, as a damaged page would give it.
        let damaged = unsafe { RawJsonb::from_container(&bytes) };
        let caught = PgTryBuilder::new(|| {
            // SAFETY: a jsonb datum, damaged on purpose.
            let _ = unsafe { damaged.sealed() }.or_report();
            None
        })
        .catch_others(|e| match e {
            pg_sys::panic::CaughtError::ErrorReport(report) => {
                Some((report.sql_error_code(), report.message().to_owned()))
            }
            other => panic!("unexpected {other:?}"),
        })
        .execute();
        let (code, message) = caught.expect("an ERROR");
        assert_eq!(code, PgSqlErrorCode::ERRCODE_DATA_CORRUPTED);
        assert!(message.contains("damaged"), "{message}");
    }
}
