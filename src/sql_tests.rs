//! `#[pg_test]`s of the SQL surface. Each test works on its own table so that tests can run
//! in any order; errors are caught in a subtransaction (`try_sql`) so that a test can check
//! the SQLSTATE, the message and that nothing changed.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    const KEY_A: &str = "y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q=";
    const KEY_B: &str = "PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc=";
    const KEY_C: &str = "6fYx3zeZFQ1n6rJbJdX6bHvZ9kD0n2o8o5H1lY0GkQ4=";

    const VECTORS: &str = include_str!("../tests/vectors/envelopes.json");

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn quote(s: &str) -> String {
        format!("'{}'", s.replace('\'', "''"))
    }

    /// Runs `sql` in a subtransaction; returns `SQLSTATE: message` if it failed.
    /// Created once per session, so that it also works after a test's `SET ROLE`.
    fn try_sql(sql: &str) -> Option<String> {
        run("DO $do$ BEGIN
               IF pg_catalog.to_regprocedure('pg_temp.try_sql(text)') IS NULL THEN
                 CREATE FUNCTION pg_temp.try_sql(q text) RETURNS text LANGUAGE plpgsql AS $$
                 BEGIN EXECUTE q; RETURN NULL;
                 EXCEPTION WHEN others THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
               END IF;
             END $do$");
        one::<String>(&format!("SELECT pg_temp.try_sql({})", quote(sql)))
    }

    fn expect_error(sql: &str, sqlstate: &str, fragment: &str) -> String {
        let err = try_sql(sql).unwrap_or_else(|| panic!("expected an error from {sql}"));
        assert!(err.starts_with(sqlstate), "{sql}: got {err}");
        assert!(err.contains(fragment), "{sql}: got {err}");
        err
    }

    /// Freeboard's table, as its migrations create it, under another name.
    fn create_profiles(table: &str) {
        run(&include_str!("../tests/freeboard/credential_profiles.sql")
            .replace("TABLE credential_profiles", &format!("TABLE {table}")));
    }

    /// Seeds `n` sealed rows under `key` plus `empty` rows holding the `{}` default.
    fn seed(table: &str, n: i32, empty: i32, key: &str) {
        run(&format!(
            "INSERT INTO {table} (id, name, type, secret)
             SELECT 'p' || i, 'profile ' || i, 'bearer',
                    credential_encrypt(jsonb_build_object('token', md5(i::text), 'n', i), {k})
               FROM generate_series(1, {n}) i",
            k = quote(key)
        ));
        run(&format!(
            "INSERT INTO {table} (id, name) SELECT 'e' || i, 'empty ' || i FROM generate_series(1, {empty}) i"
        ));
    }

    /// Every row's secret as text, in primary key order: what "nothing changed" compares.
    fn snapshot(table: &str) -> String {
        one::<String>(&format!(
            "SELECT string_agg(id || '=' || secret::text, E'\\n' ORDER BY id) FROM {table}"
        ))
        .unwrap_or_default()
    }

    fn counts(sql: &str) -> (i64, i64, i64, i64) {
        Spi::connect(|c| {
            let row = c.select(sql, Some(1), &[])?.first();
            Ok::<_, pgrx::spi::Error>((
                row.get::<i64>(1)?.unwrap_or(-1),
                row.get::<i64>(2)?.unwrap_or(-1),
                row.get::<i64>(3)?.unwrap_or(-1),
                row.get::<i64>(4)?.unwrap_or(-1),
            ))
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn reencrypt(old: &str, new: &str, extra: &str) -> (i64, i64, i64, i64) {
        counts(&format!(
            "SELECT * FROM credential_reencrypt({}, {}{extra})",
            quote(old),
            quote(new)
        ))
    }

    fn verify(key: &str, extra: &str) -> (i64, i64, i64, i64) {
        counts(&format!(
            "SELECT * FROM credential_verify({}{extra})",
            quote(key)
        ))
    }

    #[pg_test]
    fn rotation_reseals_every_row_under_the_new_key_only() {
        create_profiles("rot1");
        seed("rot1", 50, 3, KEY_A);
        run("CREATE TEMP TABLE rot1_before AS SELECT id, credential_decrypt(secret, 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q=') AS plain, secret FROM rot1");

        assert_eq!(reencrypt(KEY_A, KEY_B, ", 'rot1'"), (53, 50, 0, 3));

        // Same plaintext bytes under the new key, for every row.
        let mismatched = one::<i64>(&format!(
            "SELECT count(*) FROM rot1 r JOIN rot1_before b USING (id)
              WHERE credential_decrypt(r.secret, {}) IS DISTINCT FROM b.plain",
            quote(KEY_B)
        ));
        assert_eq!(mismatched, Some(0));
        // Nothing opens with the old key any more, and every IV is fresh.
        assert_eq!(verify(KEY_A, ", 'rot1'"), (0, 50, 3, 0));
        assert_eq!(verify(KEY_B, ", 'rot1'"), (50, 0, 3, 0));
        let reused_iv = one::<i64>(
            "SELECT count(*) FROM rot1 r JOIN rot1_before b USING (id)
              WHERE r.secret <> '{}' AND r.secret->>'iv' = b.secret->>'iv'",
        );
        assert_eq!(reused_iv, Some(0));
        // keyId and algorithm kept; empty rows untouched.
        assert_eq!(
            one::<i64>("SELECT count(*) FROM rot1 WHERE secret <> '{}' AND (secret->>'keyId' <> 'v1' OR secret->>'algorithm' <> 'aes-256-gcm')"),
            Some(0)
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM rot1 WHERE secret = '{}'"),
            Some(3)
        );
    }

    #[pg_test]
    fn rerun_is_a_no_op_and_swapping_the_keys_rolls_back() {
        create_profiles("rot2");
        seed("rot2", 20, 2, KEY_A);
        run("CREATE TEMP TABLE rot2_plain AS SELECT id, credential_decrypt(secret, 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q=') AS plain FROM rot2");
        assert_eq!(reencrypt(KEY_A, KEY_B, ", 'rot2'"), (22, 20, 0, 2));
        let after_first = snapshot("rot2");
        assert_eq!(reencrypt(KEY_A, KEY_B, ", 'rot2'"), (22, 0, 20, 2));
        assert_eq!(snapshot("rot2"), after_first, "a re-run rewrites nothing");

        assert_eq!(reencrypt(KEY_B, KEY_A, ", 'rot2'"), (22, 20, 0, 2));
        assert_eq!(verify(KEY_A, ", 'rot2'"), (20, 0, 2, 0));
        let mismatched = one::<i64>(&format!(
            "SELECT count(*) FROM rot2 r JOIN rot2_plain p USING (id)
              WHERE credential_decrypt(r.secret, {}) IS DISTINCT FROM p.plain",
            quote(KEY_A)
        ));
        assert_eq!(mismatched, Some(0));
    }

    #[pg_test]
    fn rows_the_application_already_rewrote_count_as_current() {
        create_profiles("rot3");
        seed("rot3", 10, 0, KEY_A);
        run(&format!(
            "UPDATE rot3 SET secret = credential_encrypt('{{\"token\":\"new\"}}'::text, {}) WHERE id IN ('p1', 'p2')",
            quote(KEY_B)
        ));
        assert_eq!(reencrypt(KEY_A, KEY_B, ", 'rot3'"), (10, 8, 2, 0));
        assert_eq!(verify(KEY_B, ", 'rot3'"), (10, 0, 0, 0));
    }

    #[pg_test]
    fn a_bad_row_stops_the_call_names_the_row_and_changes_nothing() {
        let vectors: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        create_profiles("rot4");
        seed("rot4", 30, 2, KEY_A);
        let mut cases: Vec<(String, String)> = vectors["malformed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["why"].as_str().unwrap().to_owned(),
                    m["envelope"].to_string(),
                )
            })
            .collect();
        cases.push((
            "sealed under a third key".into(),
            one::<String>(&format!(
                "SELECT credential_encrypt('{{}}'::text, {})::text",
                quote(KEY_C)
            ))
            .unwrap(),
        ));
        for (why, envelope) in cases {
            run(&format!(
                "UPDATE rot4 SET secret = {}::jsonb WHERE id = 'p17'",
                quote(&envelope)
            ));
            let before = snapshot("rot4");
            let err = expect_error(
                &format!(
                    "SELECT * FROM credential_reencrypt({}, {}, 'rot4')",
                    quote(KEY_A),
                    quote(KEY_B)
                ),
                if why.contains("altered") || why.contains("third key") {
                    "22000"
                } else {
                    "22P02"
                },
                "(id)=(p17)",
            );
            assert!(err.contains("public.rot4"), "{why}: {err}");
            assert!(!err.contains(KEY_A) && !err.contains(KEY_B), "{why}: {err}");
            assert_eq!(snapshot("rot4"), before, "{why}: nothing may change");
            // A dry run reports the same row.
            expect_error(
                &format!(
                    "SELECT * FROM credential_reencrypt({}, {}, 'rot4', dry_run => true)",
                    quote(KEY_A),
                    quote(KEY_B)
                ),
                "22",
                "(id)=(p17)",
            );
        }
    }

    #[pg_test]
    fn a_rolled_back_rotation_leaves_the_old_envelopes() {
        create_profiles("rot5");
        seed("rot5", 10, 1, KEY_A);
        let before = snapshot("rot5");
        // A subtransaction that rotates and then fails: the rotation is undone with it.
        let err = try_sql(&format!(
            "DO $$ BEGIN
               PERFORM * FROM credential_reencrypt({}, {}, 'rot5');
               IF (SELECT count(*) FROM rot5 WHERE credential_decrypt(secret, {}) IS NOT NULL) <> 10 THEN
                 RAISE EXCEPTION 'rotation did not happen';
               END IF;
               RAISE EXCEPTION 'caller aborts';
             END $$",
            quote(KEY_A),
            quote(KEY_B),
            quote(KEY_B)
        ));
        assert!(err.unwrap_or_default().contains("caller aborts"));
        assert_eq!(snapshot("rot5"), before);
    }

    #[pg_test]
    fn dry_run_counts_without_writing() {
        create_profiles("rot6");
        seed("rot6", 12, 2, KEY_A);
        let before = snapshot("rot6");
        assert_eq!(
            reencrypt(KEY_A, KEY_B, ", 'rot6', dry_run => true"),
            (14, 12, 0, 2)
        );
        assert_eq!(snapshot("rot6"), before);
    }

    #[pg_test]
    fn bad_keys_are_refused_naming_the_argument_never_its_value() {
        create_profiles("credential_profiles");
        let thirty_one = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==";
        for (old, new, arg, why) in [
            ("NULL".to_string(), quote(KEY_B), "old_key", "NULL"),
            (quote(KEY_A), "NULL".to_string(), "new_key", "NULL"),
            ("''".to_string(), quote(KEY_B), "old_key", "empty"),
            (quote(KEY_A), "'   '".into(), "new_key", "empty"),
            (
                "'not base64!'".to_string(),
                quote(KEY_B),
                "old_key",
                "base64",
            ),
            (quote(thirty_one), quote(KEY_B), "old_key", "31 bytes"),
            (quote(KEY_A), quote(&KEY_B[..20]), "new_key", "15 bytes"),
        ] {
            let sql = format!("SELECT * FROM credential_reencrypt({old}, {new})");
            let err = expect_error(&sql, "22023", arg);
            assert!(err.contains(why), "{sql}: {err}");
            for secret in [KEY_A, KEY_B, thirty_one, &KEY_B[..20]] {
                assert!(!err.contains(secret), "{err}");
            }
        }
        // The same key, also when written differently.
        let url_safe = KEY_A.replace('+', "-").replace('/', "_");
        expect_error(
            &format!(
                "SELECT * FROM credential_reencrypt({}, {})",
                quote(KEY_A),
                quote(&url_safe)
            ),
            "22023",
            "same key",
        );
        for f in [
            "credential_encrypt('{}'::text, 'short')",
            "credential_decrypt('{}'::text, NULL)",
            "credential_key_fingerprint('')",
            "credential_verify('nope')",
        ] {
            let err = expect_error(&format!("SELECT {f}"), "22023", "key");
            assert!(err.contains("key is not a valid key"), "{f}: {err}");
        }
    }

    #[pg_test]
    fn keys_are_accepted_as_the_application_accepts_them() {
        create_profiles("rot7");
        seed("rot7", 3, 0, KEY_A);
        let sloppy = format!(
            " {}\n",
            KEY_B
                .trim_end_matches('=')
                .replace('+', "-")
                .replace('/', "_")
        );
        assert_eq!(reencrypt(KEY_A, &sloppy, ", 'rot7'"), (3, 3, 0, 0));
        assert_eq!(verify(KEY_B, ", 'rot7'"), (3, 0, 0, 0));
    }

    #[pg_test]
    fn node_sealed_vectors_open_in_the_extension() {
        let vectors: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        let key_a = vectors["key_a"].as_str().unwrap();
        for good in vectors["good"].as_array().unwrap() {
            let opened = one::<String>(&format!(
                "SELECT credential_decrypt({}::jsonb, {})",
                quote(&good["envelope"].to_string()),
                quote(key_a)
            ));
            assert_eq!(opened.as_deref(), good["plaintext"].as_str());
            let from_text = one::<String>(&format!(
                "SELECT credential_decrypt({}::text, {})",
                quote(&good["envelope"].to_string()),
                quote(key_a)
            ));
            assert_eq!(from_text.as_deref(), good["plaintext"].as_str());
        }
        expect_error(
            &format!(
                "SELECT credential_decrypt({}::jsonb, {})",
                quote(&vectors["wrong_key"]["envelope"].to_string()),
                quote(key_a)
            ),
            "22000",
            "does not open",
        );
        assert_eq!(
            one::<String>(&format!(
                "SELECT credential_decrypt('{{}}'::jsonb, {})",
                quote(key_a)
            )),
            None
        );
    }

    #[pg_test]
    fn encrypt_writes_the_application_format() {
        let env = one::<pgrx::JsonB>(&format!(
            "SELECT credential_encrypt('{{\"username\": \"u\", \"password\": \"p\"}}'::jsonb, {})",
            quote(KEY_A)
        ))
        .unwrap()
        .0;
        let obj = env.as_object().unwrap();
        assert_eq!(obj["algorithm"], "aes-256-gcm");
        assert_eq!(obj["keyId"], "v1");
        assert_eq!(
            obj["iv"].as_str().unwrap().len(),
            16,
            "12 bytes, padded base64"
        );
        assert_eq!(
            obj["authTag"].as_str().unwrap().len(),
            24,
            "16 bytes, padded base64"
        );
        // The plaintext is JSON.stringify's compact form.
        let opened = one::<String>(&format!(
            "SELECT credential_decrypt({}::jsonb, {})",
            quote(&env.to_string()),
            quote(KEY_A)
        ));
        assert_eq!(
            opened.as_deref(),
            Some(r#"{"password":"p","username":"u"}"#)
        );
        assert_eq!(
            one::<pgrx::JsonB>(&format!(
                "SELECT credential_encrypt(NULL::jsonb, {})",
                quote(KEY_A)
            ))
            .map(|j| j.0),
            None
        );
    }

    #[pg_test]
    fn extra_envelope_fields_survive_a_rotation() {
        create_profiles("rot8");
        run(&format!(
            "INSERT INTO rot8 (id, name, secret)
             VALUES ('x', 'x', credential_encrypt('{{\"token\":\"t\"}}'::text, {}) || '{{\"keyId\": \"legacy\", \"rotatedBy\": {{\"who\": [1, 2]}}}}')",
            quote(KEY_A)
        ));
        assert_eq!(reencrypt(KEY_A, KEY_B, ", 'rot8'"), (1, 1, 0, 0));
        assert_eq!(
            one::<String>("SELECT secret->>'keyId' FROM rot8").as_deref(),
            Some("legacy")
        );
        assert_eq!(
            one::<String>("SELECT (secret->'rotatedBy')::text FROM rot8").as_deref(),
            Some(r#"{"who": [1, 2]}"#)
        );
    }

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

    #[pg_test]
    fn json_and_text_columns_and_quoted_names() {
        run(r#"CREATE SCHEMA "Tenant One""#);
        run(
            r#"CREATE TABLE "Tenant One"."Profiles ""x""" (pk int PRIMARY KEY, "Sealed Secret" text, j json)"#,
        );
        run(&format!(
            r#"INSERT INTO "Tenant One"."Profiles ""x""" VALUES
               (1, credential_encrypt('{{"a":1}}'::text, {a})::text, credential_encrypt('{{"a":1}}'::text, {a})::json),
               (2, NULL, NULL),
               (3, '{{}}', '{{}}')"#,
            a = quote(KEY_A)
        ));
        let table = quote(r#""Tenant One"."Profiles ""x""""#);
        assert_eq!(
            reencrypt(KEY_A, KEY_B, &format!(", {table}, 'Sealed Secret'")),
            (3, 1, 0, 2)
        );
        assert_eq!(
            reencrypt(KEY_A, KEY_B, &format!(", {table}, 'j'")),
            (3, 1, 0, 2)
        );
        // Written back as the column's own type: compact text, fields in the order found.
        let order = |col: &str| {
            one::<String>(&format!(
                r#"SELECT string_agg(k, ',') FROM "Tenant One"."Profiles ""x""",
                          json_object_keys({col}::json) k WHERE pk = 1"#
            ))
        };
        let text = one::<String>(
            r#"SELECT "Sealed Secret" FROM "Tenant One"."Profiles ""x""" WHERE pk = 1"#,
        )
        .unwrap();
        assert!(!text.contains(": "), "{text}");
        assert_eq!(
            order(r#""Sealed Secret""#).as_deref(),
            Some("iv,keyId,authTag,algorithm,ciphertext")
        );
        assert_eq!(
            one::<String>(&format!(
                r#"SELECT credential_decrypt("Sealed Secret", {}) FROM "Tenant One"."Profiles ""x""" WHERE pk = 1"#,
                quote(KEY_B)
            ))
            .as_deref(),
            Some(r#"{"a":1}"#)
        );
        assert_eq!(
            one::<String>(&format!(
                r#"SELECT credential_decrypt(j::text, {}) FROM "Tenant One"."Profiles ""x""" WHERE pk = 1"#,
                quote(KEY_B)
            ))
            .as_deref(),
            Some(r#"{"a":1}"#)
        );
    }

    #[pg_test]
    fn missing_tables_columns_and_wrong_types_get_standard_sqlstates() {
        create_profiles("rot9");
        let call = |extra: &str| {
            format!(
                "SELECT * FROM credential_reencrypt({}, {}{extra})",
                quote(KEY_A),
                quote(KEY_B)
            )
        };
        expect_error(&call(", 'no_such_table'"), "42P01", "no_such_table");
        expect_error(
            &call(", 'rot9', 'no_such_column'"),
            "42703",
            "no_such_column",
        );
        expect_error(
            &call(", 'rot9', 'created_at'"),
            "42804",
            "timestamp with time zone",
        );
        expect_error(&call(", 'rot9', 'allow_public_use'"), "42804", "boolean");
        run("CREATE TABLE rot9_nopk (secret jsonb)");
        expect_error(&call(", 'rot9_nopk'"), "55000", "no primary key");
        run("CREATE VIEW rot9_view AS SELECT * FROM rot9");
        expect_error(&call(", 'rot9_view'"), "42809", "not a table");
        expect_error(&call(", NULL"), "22023", "target_table");
    }

    #[pg_test]
    fn composite_and_integer_primary_keys_are_named_in_errors() {
        run("CREATE TABLE rot10 (tenant int, slot text, secret jsonb, PRIMARY KEY (tenant, slot))");
        run(&format!(
            "INSERT INTO rot10 VALUES (1, 'a', credential_encrypt('{{}}'::text, {a})), (2, 'b c', '[]')",
            a = quote(KEY_A)
        ));
        expect_error(
            &format!(
                "SELECT * FROM credential_reencrypt({}, {}, 'rot10')",
                quote(KEY_A),
                quote(KEY_B)
            ),
            "22P02",
            "(tenant, slot)=(2, b c)",
        );
    }

    #[pg_test]
    fn updated_at_is_touched_only_when_asked() {
        create_profiles("rot11");
        seed("rot11", 4, 1, KEY_A);
        run("UPDATE rot11 SET updated_at = '2000-01-01'");
        reencrypt(KEY_A, KEY_B, ", 'rot11'");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM rot11 WHERE updated_at <> '2000-01-01'"),
            Some(0)
        );
        reencrypt(KEY_B, KEY_A, ", 'rot11', touch_updated_at => true");
        // Rewritten rows only; the empty one keeps its timestamp.
        assert_eq!(
            one::<i64>("SELECT count(*) FROM rot11 WHERE updated_at = now()"),
            Some(4)
        );
        run("CREATE TABLE rot11b (id int PRIMARY KEY, secret jsonb, updated_at text)");
        expect_error(
            &format!(
                "SELECT * FROM credential_reencrypt({}, {}, 'rot11b', touch_updated_at => true)",
                quote(KEY_A),
                quote(KEY_B)
            ),
            "42804",
            "updated_at",
        );
    }

    #[pg_test]
    fn verify_counts_and_lists_bad_rows_without_secret_material() {
        create_profiles("rot12");
        seed("rot12", 5, 2, KEY_A);
        run(&format!(
            "UPDATE rot12 SET secret = credential_encrypt('{{}}'::text, {}) WHERE id = 'p2'",
            quote(KEY_B)
        ));
        run(r#"UPDATE rot12 SET secret = '{"algorithm":"aes-128-cbc"}' WHERE id = 'p4'"#);
        assert_eq!(verify(KEY_A, ", 'rot12'"), (3, 1, 2, 1));
        let listed = one::<String>(&format!(
            "SELECT string_agg(primary_key || ' ' || reason, '; ') FROM credential_verify_rows({}, 'rot12')",
            quote(KEY_A)
        ))
        .unwrap();
        assert_eq!(
            listed,
            "(id)=(p2) the envelope does not open with the key; (id)=(p4) the envelope algorithm is not \"aes-256-gcm\""
        );
    }

    #[pg_test]
    fn helpers_refuse_to_work_outside_a_call() {
        expect_error(
            "SELECT credential_rotate._credential_reencrypt_row(0, '(0,1)', '{}')",
            "55000",
            "only called by",
        );
        expect_error(
            "SELECT credential_rotate._credential_reencrypt_take('(0,1)')",
            "55000",
            "only called by",
        );
        expect_error(
            "SELECT credential_rotate._credential_status('{}')",
            "55000",
            "only called by",
        );
    }

    #[pg_test]
    fn a_trigger_that_skips_rows_aborts_the_rotation() {
        create_profiles("rot13");
        seed("rot13", 5, 0, KEY_A);
        run(
            "CREATE FUNCTION rot13_skip() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.id = 'p3' THEN RETURN NULL; END IF; RETURN NEW; END $$",
        );
        run(
            "CREATE TRIGGER skip BEFORE UPDATE ON rot13 FOR EACH ROW EXECUTE FUNCTION rot13_skip()",
        );
        let before = snapshot("rot13");
        expect_error(
            &format!(
                "SELECT * FROM credential_reencrypt({}, {}, 'rot13')",
                quote(KEY_A),
                quote(KEY_B)
            ),
            "09000",
            "skipped rows the rotation re-sealed",
        );
        assert_eq!(snapshot("rot13"), before);
    }

    #[pg_test]
    fn fingerprints_and_generated_keys() {
        assert_eq!(
            one::<String>(&format!(
                "SELECT credential_key_fingerprint({})",
                quote(KEY_A)
            ))
            .as_deref(),
            Some("8d3197a7dd0e26e7")
        );
        let distinct = one::<i64>(
            "SELECT count(DISTINCT k) FROM (SELECT credential_generate_key() k FROM generate_series(1, 20)) s
              WHERE length(k) = 44 AND decode(k, 'base64') IS NOT NULL",
        );
        assert_eq!(distinct, Some(20));
    }

    /// The helpers PUBLIC may execute; everything else needs a grant.
    const PUBLIC_HELPERS: [&str; 13] = [
        "credential_rotate._credential_audit_append()",
        "credential_rotate._credential_batched_start(text[],text,integer)",
        "credential_rotate._credential_census_status(text)",
        "credential_rotate._credential_census_status_jsonb(jsonb)",
        "credential_rotate._credential_check_keys(text,text)",
        "credential_rotate._credential_reencrypt_batch(text[],text,text,text,integer,tid,bigint[])",
        "credential_rotate._credential_reencrypt_batched(text[],text,integer,text,text)",
        "credential_rotate._credential_reencrypt_row(oid,tid,text)",
        "credential_rotate._credential_reencrypt_row_jsonb(oid,tid,jsonb)",
        "credential_rotate._credential_reencrypt_take(tid)",
        "credential_rotate._credential_reencrypt_take_jsonb(tid,jsonb)",
        "credential_rotate._credential_status(text)",
        "credential_rotate._credential_status_jsonb(jsonb)",
    ];

    #[pg_test]
    fn only_the_internal_helpers_are_executable_by_public_and_they_act_only_inside_a_call() {
        let public_exec = one::<String>(
            "SELECT string_agg(replace(p.oid::regprocedure::text, ' ', ''), ' '
                               ORDER BY p.oid::regprocedure::text COLLATE \"C\")
               FROM pg_proc p
               JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'credential_rotate'
              WHERE has_function_privilege('public', p.oid, 'EXECUTE')",
        );
        assert_eq!(
            public_exec.as_deref(),
            Some(PUBLIC_HELPERS.join(" ").as_str())
        );
        // A role with no grant at all, on a table it may read and write.
        create_profiles("rot_pub");
        seed("rot_pub", 3, 0, KEY_A);
        run("CREATE ROLE nobody_special NOLOGIN");
        run("GRANT SELECT, UPDATE ON rot_pub TO nobody_special");
        let before = snapshot("rot_pub");
        run("SET ROLE nobody_special");
        for call in [
            "SELECT credential_rotate._credential_reencrypt_row('rot_pub'::regclass, '(0,1)', '{}')",
            "SELECT credential_rotate._credential_reencrypt_row_jsonb('rot_pub'::regclass, '(0,1)', '{}')",
            "SELECT credential_rotate._credential_reencrypt_take('(0,1)')",
            "SELECT credential_rotate._credential_reencrypt_take_jsonb('(0,1)', '{}')",
            "SELECT credential_rotate._credential_status('{}')",
            "SELECT credential_rotate._credential_status_jsonb('{}')",
            "SELECT credential_rotate._credential_census_status('{}')",
            "SELECT credential_rotate._credential_census_status_jsonb('{}')",
            "SELECT credential_rotate._credential_audit_append()",
        ] {
            expect_error(call, "55000", "only called by");
        }
        // The batch helpers act on their own: they need EXECUTE on a procedure that uses them.
        for call in [
            batch_call(KEY_A, KEY_B, "rot_pub", "NULL"),
            format!(
                "SELECT credential_rotate._credential_batched_start(ARRAY[{}], {}, 10)",
                quote(KEY_A),
                quote(KEY_B)
            ),
            format!(
                "CALL credential_rotate._credential_reencrypt_batched(ARRAY[{}], {}, 10, 'rot_pub', 'secret')",
                quote(KEY_A),
                quote(KEY_B)
            ),
        ] {
            expect_error(
                &call,
                "42501",
                "permission denied for procedure credential_reencrypt_batched",
            );
        }
        // The user-facing functions need a grant.
        expect_error(
            &format!(
                "SELECT * FROM credential_reencrypt({}, {}, 'rot_pub')",
                quote(KEY_A),
                quote(KEY_B)
            ),
            "42501",
            "permission denied for function credential_reencrypt",
        );
        run("RESET ROLE");
        assert_eq!(snapshot("rot_pub"), before);
        // Either form of the procedure, granted alone, grants its batches.
        for (form, from, to) in [
            ("text, text, integer, text, text", KEY_A, KEY_B),
            ("text[], text, integer, text, text", KEY_B, KEY_A),
        ] {
            run(&format!(
                "GRANT EXECUTE ON PROCEDURE credential_reencrypt_batched({form}) TO nobody_special"
            ));
            run("SET ROLE nobody_special");
            assert_eq!(
                counts(&batch_call(from, to, "rot_pub", "NULL")),
                (3, 3, 0, 0)
            );
            run("RESET ROLE");
            run(&format!(
                "REVOKE EXECUTE ON PROCEDURE credential_reencrypt_batched({form}) FROM nobody_special"
            ));
        }
        run("GRANT EXECUTE ON PROCEDURE credential_reencrypt_batched(text, text, integer, text, text) TO nobody_special");
        run("SET ROLE nobody_special");
        expect_error(
            &format!(
                "SELECT * FROM credential_rotate._credential_reencrypt_batch(ARRAY[{}], {}, 'rot_pub', 'secret', 10, NULL, '{{1,2}}')",
                quote(KEY_A),
                quote(KEY_B)
            ),
            "XX000",
            "a batch's state is not one this library made",
        );
        run("RESET ROLE");
    }

    /// One call of the batch helper of `credential_reencrypt_batched`, from `old` to `new`, with
    /// a fresh state for one old key; `resume` is a tid literal or NULL for the final pass.
    /// Its counts: scanned, updated, already current, empty.
    fn batch_call(old: &str, new: &str, table: &str, resume: &str) -> String {
        format!(
            "SELECT state[2], state[3], state[4], state[5]
               FROM credential_rotate._credential_reencrypt_batch(ARRAY[{}], {}, '{table}', 'secret', 1000, {resume},
                                                '{{0,0,0,0,0,16,-1,0}}')",
            quote(old),
            quote(new)
        )
    }

    /// A table with row-level security whose policy shows `viewer` only the rows with an even
    /// number: half of them.
    fn create_rls_table(table: &str) {
        create_profiles(table);
        seed(table, 10, 2, KEY_A);
        run(&format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"));
        run(&format!(
            "CREATE POLICY half ON {table} USING (substr(id, 2)::int % 2 = 0)"
        ));
    }

    #[pg_test]
    fn row_level_security_that_would_hide_rows_is_refused_never_filtered() {
        create_rls_table("rls1");
        run("CREATE ROLE rls_viewer NOLOGIN");
        run("CREATE ROLE rls_bypass NOLOGIN BYPASSRLS");
        for role in ["rls_viewer", "rls_bypass"] {
            run(&format!(
                "GRANT EXECUTE ON FUNCTION credential_reencrypt(text, text, text, text, boolean, boolean),
                   credential_verify(text, text, text), credential_verify_rows(text, text, text) TO {role}"
            ));
            run(&format!(
                "GRANT EXECUTE ON PROCEDURE credential_reencrypt_batched(text, text, integer, text, text) TO {role}"
            ));
            run(&format!("GRANT SELECT, UPDATE ON rls1 TO {role}"));
        }
        let before = snapshot("rls1");
        // The policy really hides rows from this role: 6 of 12.
        run("SET ROLE rls_viewer");
        assert_eq!(one::<i64>("SELECT count(*) FROM rls1"), Some(6));
        let (k_a, k_b) = (quote(KEY_A), quote(KEY_B));
        for call in [
            format!("SELECT * FROM credential_reencrypt({k_a}, {k_b}, 'rls1')"),
            format!("SELECT * FROM credential_reencrypt({k_a}, {k_b}, 'rls1', dry_run => true)"),
            format!("SELECT * FROM credential_verify({k_a}, 'rls1')"),
            format!("SELECT * FROM credential_verify_rows({k_a}, 'rls1')"),
            batch_call(KEY_A, KEY_B, "rls1", "'(0,0)'"),
            batch_call(KEY_A, KEY_B, "rls1", "NULL"),
        ] {
            let err = expect_error(
                &call,
                "42501",
                "row-level security is active on public.rls1",
            );
            assert!(!err.contains(KEY_A) && !err.contains(KEY_B));
        }
        run("RESET ROLE");
        assert_eq!(snapshot("rls1"), before);
        // A role with BYPASSRLS sees and rotates every row.
        run("SET ROLE rls_bypass");
        assert_eq!(verify(KEY_A, ", 'rls1'"), (10, 0, 2, 0));
        assert_eq!(reencrypt(KEY_A, KEY_B, ", 'rls1'"), (12, 10, 0, 2));
        run("RESET ROLE");
        // So does a superuser (this test's own role), and the owner without FORCE.
        assert_eq!(reencrypt(KEY_B, KEY_A, ", 'rls1'"), (12, 10, 0, 2));
        assert_eq!(verify(KEY_A, ", 'rls1'"), (10, 0, 2, 0));
    }

    #[pg_test]
    fn forced_row_level_security_applies_to_the_owner_and_is_refused() {
        run("CREATE ROLE rls_owner NOLOGIN");
        run(
            "GRANT EXECUTE ON FUNCTION credential_reencrypt(text, text, text, text, boolean, boolean),
               credential_verify(text, text, text) TO rls_owner",
        );
        create_rls_table("rls2");
        run("ALTER TABLE rls2 OWNER TO rls_owner");
        let before = snapshot("rls2");
        // Without FORCE the owner is exempt from its own policies: the rotation sees all.
        run("SET ROLE rls_owner");
        assert_eq!(verify(KEY_A, ", 'rls2'"), (10, 0, 2, 0));
        run("RESET ROLE");
        run("ALTER TABLE rls2 FORCE ROW LEVEL SECURITY");
        run("SET ROLE rls_owner");
        expect_error(
            &format!(
                "SELECT * FROM credential_reencrypt({}, {}, 'rls2')",
                quote(KEY_A),
                quote(KEY_B)
            ),
            "42501",
            "row-level security",
        );
        expect_error(
            &format!("SELECT * FROM credential_verify({}, 'rls2')", quote(KEY_A)),
            "42501",
            "row-level security",
        );
        run("RESET ROLE");
        assert_eq!(snapshot("rls2"), before);
    }

    #[pg_test]
    fn row_level_security_on_a_partition_does_not_hide_rows_from_a_rotation_of_the_parent() {
        run(
            "CREATE TABLE rls_parted (kind text, id text, secret jsonb NOT NULL DEFAULT '{}',
                                      PRIMARY KEY (kind, id)) PARTITION BY LIST (kind)",
        );
        run("CREATE TABLE rls_parted_p PARTITION OF rls_parted FOR VALUES IN ('p')");
        run("CREATE TABLE rls_parted_q PARTITION OF rls_parted FOR VALUES IN ('q')");
        run(&format!(
            "INSERT INTO rls_parted SELECT c, c || i, credential_encrypt('{{\"n\":1}}'::text, {})
               FROM generate_series(1, 4) i, unnest(ARRAY['p', 'q']) c",
            quote(KEY_A)
        ));
        // A policy hiding every row of one partition from everybody it applies to.
        run("ALTER TABLE rls_parted_q ENABLE ROW LEVEL SECURITY");
        run("CREATE POLICY nothing ON rls_parted_q USING (false)");
        run("CREATE ROLE rls_parted_role NOLOGIN");
        run(
            "GRANT EXECUTE ON FUNCTION credential_reencrypt(text, text, text, text, boolean, boolean)
               TO rls_parted_role",
        );
        run("GRANT SELECT, UPDATE ON rls_parted TO rls_parted_role");
        run("SET ROLE rls_parted_role");
        // Through the parent the partition's policies do not apply: every row is rotated.
        assert_eq!(reencrypt(KEY_A, KEY_B, ", 'rls_parted'"), (8, 8, 0, 0));
        run("RESET ROLE");
        assert_eq!(verify(KEY_B, ", 'rls_parted'"), (8, 0, 0, 0));
        // The partition named directly is refused.
        run("GRANT SELECT, UPDATE ON rls_parted_q TO rls_parted_role");
        run("SET ROLE rls_parted_role");
        expect_error(
            &format!(
                "SELECT * FROM credential_reencrypt({}, {}, 'rls_parted_q')",
                quote(KEY_B),
                quote(KEY_A)
            ),
            "42501",
            "row-level security is active on public.rls_parted_q",
        );
        run("RESET ROLE");
    }

    /// A table owned by another role (`app_owner_tc`), whose code records every statement it
    /// runs in: the keys of a rotation would be in `captured`.
    fn create_capturing_table(table: &str) {
        create_profiles(table);
        seed(table, 4, 0, KEY_A);
        run("CREATE TABLE IF NOT EXISTS captured (q text)");
        run("GRANT INSERT ON captured TO PUBLIC");
        run(&format!("ALTER TABLE {table} OWNER TO app_owner_tc"));
    }

    /// Rows the table's code wrote. (Here the client statement is the test itself, so it would
    /// not hold the keys; tests/pg_regress/sql/08_table_code.sql shows what a client's
    /// statement exposes.)
    fn captured_rows() -> i64 {
        one::<i64>("SELECT count(*) FROM captured").unwrap_or(-1)
    }

    #[pg_test]
    fn code_of_another_role_on_the_table_is_refused_before_it_can_read_the_keys() {
        run("CREATE ROLE app_owner_tc NOLOGIN");
        run("GRANT CREATE ON SCHEMA public TO app_owner_tc");
        let rotate_ab = |table: &str| {
            format!(
                "SELECT * FROM credential_reencrypt({}, {}, '{table}')",
                quote(KEY_A),
                quote(KEY_B)
            )
        };
        // 1. A trigger whose function belongs to the table's owner.
        create_capturing_table("tc_trigger");
        run("SET ROLE app_owner_tc");
        run(
            "CREATE FUNCTION capture_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.captured VALUES (pg_catalog.current_query()); RETURN NEW; END $$",
        );
        run("CREATE TRIGGER capture BEFORE UPDATE ON tc_trigger FOR EACH ROW EXECUTE FUNCTION capture_trigger()");
        run("RESET ROLE");
        let before = snapshot("tc_trigger");
        let err = expect_error(
            &rotate_ab("tc_trigger"),
            "55000",
            "trigger capture on public.tc_trigger (public.capture_trigger(), owned by app_owner_tc)",
        );
        assert!(!err.contains(KEY_A) && !err.contains(KEY_B));
        assert_eq!(snapshot("tc_trigger"), before);
        assert_eq!(captured_rows(), 0);
        // A dry run and a verification run no table code: they go on.
        assert_eq!(
            reencrypt(KEY_A, KEY_B, ", 'tc_trigger', dry_run => true"),
            (4, 4, 0, 0)
        );
        assert_eq!(verify(KEY_A, ", 'tc_trigger'"), (4, 0, 0, 0));
        assert_eq!(captured_rows(), 0);

        // 2. An expression index on another column, with a function of the owner's.
        create_capturing_table("tc_index");
        run("SET ROLE app_owner_tc");
        run(
            // An IMMUTABLE PL/pgSQL function may not INSERT; it can still keep what it sees.
            "CREATE FUNCTION capture_index(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
             BEGIN PERFORM set_config('tc.captured', current_query(), false); RETURN t; END $$",
        );
        run("CREATE INDEX tc_index_name ON tc_index (capture_index(name))");
        run("RESET ROLE");
        expect_error(
            &rotate_ab("tc_index"),
            "55000",
            "index public.tc_index_name (public.capture_index(text), owned by app_owner_tc)",
        );
        let seen = one::<String>("SELECT current_setting('tc.captured', true)").unwrap_or_default();
        assert!(!seen.contains(KEY_A) && !seen.contains(KEY_B));

        // 3. An UPDATE rule of the owner's.
        create_capturing_table("tc_rule");
        run("SET ROLE app_owner_tc");
        run("CREATE RULE capture_rule AS ON UPDATE TO tc_rule DO ALSO INSERT INTO captured VALUES (current_query())");
        run("RESET ROLE");
        expect_error(
            &rotate_ab("tc_rule"),
            "55000",
            "rule capture_rule on public.tc_rule (owned by app_owner_tc)",
        );
        assert_eq!(captured_rows(), 0);

        // 4. A policy never runs in a rotation: the roles it applies to are refused first,
        //    and for everybody else (here a superuser) it does not run at all.
        create_capturing_table("tc_policy");
        run("SET ROLE app_owner_tc");
        run(
            "CREATE FUNCTION capture_policy() RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO captured VALUES (current_query()); RETURN true; END $$",
        );
        run("ALTER TABLE tc_policy ENABLE ROW LEVEL SECURITY");
        run("CREATE POLICY capture ON tc_policy USING (capture_policy())");
        run("RESET ROLE");
        assert_eq!(reencrypt(KEY_A, KEY_B, ", 'tc_policy'"), (4, 4, 0, 0));
        assert_eq!(captured_rows(), 0);

        // Code the caller owns is the caller's own: it runs.
        create_profiles("tc_own");
        seed("tc_own", 2, 0, KEY_A);
        run("CREATE INDEX tc_own_name ON tc_own (lower(name))");
        run("CREATE FUNCTION own_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$");
        run("CREATE TRIGGER own BEFORE UPDATE ON tc_own FOR EACH ROW EXECUTE FUNCTION own_trigger()");
        assert_eq!(reencrypt(KEY_A, KEY_B, ", 'tc_own'"), (2, 2, 0, 0));

        // The explicit opt-in accepts the code, which then sees the statement and its keys:
        // exactly the exposure the refusal prevents.
        run("SET LOCAL credential_rotate.trust_table_code = on");
        assert_eq!(reencrypt(KEY_A, KEY_B, ", 'tc_trigger'"), (4, 4, 0, 0));
        assert_eq!(captured_rows(), 4);
        run("SET LOCAL credential_rotate.trust_table_code = off");
        // Only a superuser (or a role granted SET on it) may accept it.
        run("SET ROLE app_owner_tc");
        expect_error(
            "SET credential_rotate.trust_table_code = on",
            "42501",
            "permission denied to set parameter",
        );
        run("RESET ROLE");
    }

    #[pg_test]
    fn functions_returning_plaintext_are_volatile() {
        assert_eq!(
            one::<String>(
                "SELECT string_agg(DISTINCT provolatile::text, '') FROM pg_proc
                  WHERE proname IN ('credential_decrypt', '_credential_check_keys')"
            )
            .as_deref(),
            Some("v")
        );
        create_profiles("rot_vol");
        seed("rot_vol", 1, 0, KEY_A);
        expect_error(
            &format!(
                "CREATE INDEX ON rot_vol (credential_decrypt(secret, {}))",
                quote(KEY_A)
            ),
            "42P17",
            "IMMUTABLE",
        );
        expect_error(
            &format!(
                "ALTER TABLE rot_vol ADD COLUMN plain text GENERATED ALWAYS AS (credential_decrypt(secret, {})) STORED",
                quote(KEY_A)
            ),
            "42P17",
            "immutable",
        );
    }

    #[pg_test]
    fn an_audit_record_does_not_outlive_the_rotation_that_failed_to_append_it() {
        create_profiles("rot_aud");
        seed("rot_aud", 4, 0, KEY_A);
        run("CREATE ROLE audit_less NOLOGIN");
        run(
            "GRANT EXECUTE ON FUNCTION credential_reencrypt(text, text, text, text, boolean, boolean)
               TO audit_less",
        );
        run("GRANT SELECT, UPDATE ON rot_aud TO audit_less");
        // The audit step fails after the record was handed over: no EXECUTE on it.
        run("REVOKE EXECUTE ON FUNCTION credential_rotate._credential_audit_append() FROM PUBLIC");
        run("SET ROLE audit_less");
        expect_error(
            &format!(
                "SELECT * FROM credential_reencrypt({}, {}, 'rot_aud')",
                quote(KEY_A),
                quote(KEY_B)
            ),
            "42501",
            "_credential_audit_append",
        );
        run("RESET ROLE");
        run("GRANT EXECUTE ON FUNCTION credential_rotate._credential_audit_append() TO PUBLIC");
        // A later append in the same session finds nothing to append: the rotation it would
        // record was rolled back.
        expect_error(
            "SELECT credential_rotate._credential_audit_append()",
            "55000",
            "only called by",
        );
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM credential_rotate_audit WHERE target_table = 'public.rot_aud'"
            ),
            Some(0)
        );
        assert_eq!(verify(KEY_A, ", 'rot_aud'"), (4, 0, 0, 0));
    }

    #[pg_test]
    fn a_failed_call_leaves_no_state_behind_for_the_next_one() {
        create_profiles("rot_state");
        seed("rot_state", 6, 0, KEY_A);
        run(&format!(
            "UPDATE rot_state SET secret = credential_encrypt('{{}}'::text, {}) WHERE id = 'p4'",
            quote(KEY_C)
        ));
        run("SET credential_rotate.progress_rows = 1");
        // Fails on row p4, after NOTICEs and re-sealed rows, in a subtransaction.
        expect_error(
            &format!(
                "SELECT * FROM credential_reencrypt({}, {}, 'rot_state')",
                quote(KEY_A),
                quote(KEY_B)
            ),
            "22000",
            "(id)=(p4)",
        );
        // Nothing of that call is left: the helpers refuse, and the next calls work.
        expect_error(
            "SELECT credential_rotate._credential_reencrypt_take('(0,1)')",
            "55000",
            "only called by",
        );
        expect_error(
            "SELECT credential_rotate._credential_status('{}')",
            "55000",
            "only called by",
        );
        assert_eq!(verify(KEY_A, ", 'rot_state'"), (5, 1, 0, 0));
        run(&format!(
            "UPDATE rot_state SET secret = credential_encrypt('{{}}'::text, {}) WHERE id = 'p4'",
            quote(KEY_A)
        ));
        assert_eq!(reencrypt(KEY_A, KEY_B, ", 'rot_state'"), (6, 6, 0, 0));
    }

    #[pg_test]
    fn a_successful_rotation_appends_an_audit_row_dry_runs_and_failures_do_not() {
        create_profiles("rot14");
        seed("rot14", 6, 1, KEY_A);
        let audit_rows = || {
            one::<i64>(
                "SELECT count(*) FROM credential_rotate_audit WHERE target_table = 'public.rot14'",
            )
        };
        reencrypt(KEY_A, KEY_B, ", 'rot14', dry_run => true");
        assert_eq!(audit_rows(), Some(0));
        expect_error(
            &format!(
                "SELECT * FROM credential_reencrypt({}, {}, 'rot14')",
                quote(KEY_C),
                quote(KEY_B)
            ),
            "22000",
            "(id)=(p1)",
        );
        assert_eq!(audit_rows(), Some(0));
        reencrypt(KEY_A, KEY_B, ", 'rot14'");
        let row = one::<String>(
            "SELECT concat_ws(' ', rotated_by, secret_column, scanned, updated, already_current, empty,
                              old_key_fingerprint, new_key_fingerprint, rotated_at = now())
               FROM credential_rotate_audit WHERE target_table = 'public.rot14'",
        );
        assert_eq!(
            row.as_deref(),
            Some("postgres secret 7 6 0 1 8d3197a7dd0e26e7 9759add3a02dea8f t")
        );
        let all = one::<String>("SELECT string_agg(t::text, ' ') FROM credential_rotate_audit t")
            .unwrap();
        assert!(!all.contains(KEY_A) && !all.contains(KEY_B));
        // Dumped with the data, so the trail survives pg_dump/restore.
        assert_eq!(
            one::<bool>(
                "SELECT 'credential_rotate_audit'::regclass = ANY(extconfig) FROM pg_extension
                  WHERE extname = 'credential_rotate'"
            ),
            Some(true)
        );
    }

    #[pg_test]
    fn reencrypt_value_works_inside_a_users_own_update() {
        create_profiles("rot15");
        seed("rot15", 8, 2, KEY_A);
        run(&format!(
            "UPDATE rot15 SET secret = credential_encrypt('{{}}'::text, {}) WHERE id = 'p8'",
            quote(KEY_B)
        ));
        let before_p8 = one::<String>("SELECT secret::text FROM rot15 WHERE id = 'p8'");
        run(&format!(
            "UPDATE rot15 SET secret = credential_reencrypt_value(secret, {}, {}) WHERE id <> 'p1'",
            quote(KEY_A),
            quote(KEY_B)
        ));
        assert_eq!(verify(KEY_B, ", 'rot15'"), (7, 1, 2, 0));
        assert_eq!(
            one::<String>("SELECT secret::text FROM rot15 WHERE id = 'p8'"),
            before_p8,
            "an envelope already under the new key comes back unchanged"
        );
        // text values, and an envelope that opens with neither key
        let text = one::<String>(&format!(
            "SELECT credential_reencrypt_value(credential_encrypt('{{\"a\":1}}'::text, {a})::text, {a}, {b})",
            a = quote(KEY_A),
            b = quote(KEY_B)
        ))
        .unwrap();
        assert_eq!(
            one::<String>(&format!(
                "SELECT credential_decrypt({}::text, {})",
                quote(&text),
                quote(KEY_B)
            ))
            .as_deref(),
            Some(r#"{"a":1}"#)
        );
        expect_error(
            &format!(
                "SELECT credential_reencrypt_value(secret, {}, {}) FROM rot15",
                quote(KEY_C),
                quote(KEY_A)
            ),
            "22000",
            "does not open with old_key or new_key",
        );
        expect_error(
            &format!(
                "SELECT credential_reencrypt_value('{{}}'::jsonb, {}, {})",
                quote(KEY_A),
                quote(KEY_A)
            ),
            "22023",
            "same key",
        );
        assert_eq!(
            one::<pgrx::JsonB>(&format!(
                "SELECT credential_reencrypt_value(NULL::jsonb, {}, {})",
                quote(KEY_A),
                quote(KEY_B)
            ))
            .map(|j| j.0),
            None
        );
    }

    #[pg_test]
    fn reencrypt_value_follows_keys_that_change_from_row_to_row() {
        // The per-call-site key cache must notice when the key arguments change.
        run("CREATE TABLE rot16 (id int PRIMARY KEY, k_old text, k_new text, secret jsonb)");
        run(&format!(
            "INSERT INTO rot16 VALUES
               (1, {a}, {b}, credential_encrypt('{{\"n\":1}}'::text, {a})),
               (2, {b}, {c}, credential_encrypt('{{\"n\":2}}'::text, {b})),
               (3, {a}, {c}, credential_encrypt('{{\"n\":3}}'::text, {a}))",
            a = quote(KEY_A),
            b = quote(KEY_B),
            c = quote(KEY_C)
        ));
        run("UPDATE rot16 SET secret = credential_reencrypt_value(secret, k_old, k_new)");
        assert_eq!(
            one::<String>(
                "SELECT string_agg(credential_decrypt(secret, k_new), ',' ORDER BY id) FROM rot16"
            )
            .as_deref(),
            Some(r#"{"n":1},{"n":2},{"n":3}"#)
        );
    }

    #[pg_test]
    fn the_progress_setting_exists_and_is_user_settable() {
        run("SET credential_rotate.progress_rows = 5");
        assert_eq!(
            one::<String>("SHOW credential_rotate.progress_rows").as_deref(),
            Some("5")
        );
        create_profiles("rot17");
        seed("rot17", 12, 0, KEY_A);
        // With NOTICEs every 5 rows the rotation still completes and counts every row.
        assert_eq!(reencrypt(KEY_A, KEY_B, ", 'rot17'"), (12, 12, 0, 0));
        expect_error(
            "SET credential_rotate.progress_rows = -1",
            "22023",
            "progress_rows",
        );
    }

    /// The rows of a census, as `fingerprint|status|rows` lines (`-` for no fingerprint).
    fn census(keys: &[&str], extra: &str) -> String {
        let array = keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
        one::<String>(&format!(
            "SELECT string_agg(coalesce(key_fingerprint, '-') || '|' || status || '|' || rows,
                               E'\\n' ORDER BY n)
               FROM credential_key_census(ARRAY[{array}]{extra}) WITH ORDINALITY AS c(key_fingerprint, status, rows, n)"
        ))
        .unwrap_or_default()
    }

    fn fingerprint(key: &str) -> String {
        one::<String>(&format!(
            "SELECT credential_key_fingerprint({})",
            quote(key)
        ))
        .unwrap_or_default()
    }

    /// Seeds rows `<prefix>1..n` under `key`, interleaved with other seeds by the caller.
    fn seed_under(table: &str, prefix: &str, n: i32, key: &str) {
        run(&format!(
            "INSERT INTO {table} (id, name, secret)
             SELECT '{prefix}' || i, '{prefix} ' || i,
                    credential_encrypt(jsonb_build_object('token', '{prefix}' || i), {k})
               FROM generate_series(1, {n}) i",
            k = quote(key)
        ));
    }

    #[pg_test]
    fn several_old_keys_rotate_in_one_call_and_count_rows_per_key() {
        let key_d = one::<String>("SELECT credential_generate_key()").unwrap_or_default();
        for (table, cast) in [("sk1", ""), ("sk1_text", "::text")] {
            create_profiles(table);
            if !cast.is_empty() {
                run(&format!(
                    "ALTER TABLE {table} ALTER secret DROP DEFAULT, ALTER secret TYPE text USING secret::text,
                       ALTER secret SET DEFAULT '{{}}'"
                ));
            }
            // Rows under three old keys, interleaved in the heap, plus one current and one empty.
            for round in 0..3 {
                seed_under(table, &format!("a{round}-"), 2, KEY_A);
                seed_under(table, &format!("b{round}-"), 1, KEY_B);
                seed_under(table, &format!("c{round}-"), 3, KEY_C);
            }
            seed_under(table, "d-", 1, &key_d);
            run(&format!(
                "INSERT INTO {table} (id, name) VALUES ('e', 'empty')"
            ));
            run(&format!(
                "CREATE TEMP TABLE {table}_plain AS SELECT id, secret{cast} AS before FROM {table}"
            ));
            let call = format!(
                "SELECT * FROM credential_reencrypt(ARRAY[{a}, {b}, {c}], {d}, '{table}')",
                a = quote(KEY_A),
                b = quote(KEY_B),
                c = quote(KEY_C),
                d = quote(&key_d)
            );
            assert_eq!(counts(&call), (20, 18, 1, 1), "{table}");
            assert_eq!(verify(&key_d, &format!(", '{table}'")), (19, 0, 1, 0));
            // The same plaintext as before, under the new key.
            let mismatched = one::<i64>(&format!(
                "SELECT count(*) FROM {table} t JOIN {table}_plain p USING (id)
                  WHERE t.secret <> '{{}}'
                    AND credential_decrypt(t.secret{cast}, {d})::jsonb->>'token'
                        IS DISTINCT FROM t.id",
                d = quote(&key_d)
            ));
            assert_eq!(mismatched, Some(0), "{table}");
            // The audit row counts the rows each old key opened, by fingerprint.
            let audit = one::<String>(&format!(
                "SELECT old_key_fingerprint || ' ' || new_key_fingerprint || ' ' || updated || ' '
                        || (rows_by_old_key->>{fa}) || ',' || (rows_by_old_key->>{fb}) || ','
                        || (rows_by_old_key->>{fc})
                   FROM credential_rotate_audit WHERE target_table = 'public.{table}'",
                fa = quote(&fingerprint(KEY_A)),
                fb = quote(&fingerprint(KEY_B)),
                fc = quote(&fingerprint(KEY_C)),
            ));
            assert_eq!(
                audit,
                Some(format!(
                    "{},{},{} {} 18 6,3,9",
                    fingerprint(KEY_A),
                    fingerprint(KEY_B),
                    fingerprint(KEY_C),
                    fingerprint(&key_d)
                ))
            );
            // Again: everything is current, nothing rewritten.
            let before = snapshot(table);
            assert_eq!(counts(&call), (20, 0, 19, 1));
            assert_eq!(snapshot(table), before);
        }
    }

    #[pg_test]
    fn one_old_key_in_an_array_is_the_text_form_and_quoted_literals_still_call_the_text_form() {
        create_profiles("sk2");
        seed("sk2", 7, 1, KEY_A);
        let (k_a, k_b) = (quote(KEY_A), quote(KEY_B));
        assert_eq!(
            counts(&format!(
                "SELECT * FROM credential_reencrypt(ARRAY[{k_a}], {k_b}, 'sk2', dry_run => true)"
            )),
            reencrypt(KEY_A, KEY_B, ", 'sk2', dry_run => true")
        );
        // Unknown-typed literals resolve to the text form: its errors name old_key.
        expect_error(
            &format!("SELECT * FROM credential_reencrypt('not a key', {k_b}, 'sk2')"),
            "22023",
            "old_key is not a valid key",
        );
        expect_error(
            &format!("SELECT * FROM credential_reencrypt({k_a}, {k_a}, 'sk2')"),
            "22023",
            "old_key and new_key are the same key",
        );
        let resolved = one::<String>(&format!(
            "SELECT pg_typeof(x)::text FROM (SELECT credential_reencrypt_value('{{}}', {k_a}, {k_b}) AS x) s"
        ));
        assert_eq!(resolved.as_deref(), Some("text"));
        // A row under neither key is named, under the array form's own wording.
        run(&format!(
            "INSERT INTO sk2 (id, name, secret) VALUES ('stray', 'stray', credential_encrypt('{{}}'::text, {}))",
            quote(KEY_C)
        ));
        let before = snapshot("sk2");
        let err = expect_error(
            &format!("SELECT * FROM credential_reencrypt(ARRAY[{k_a}], {k_b}, 'sk2')"),
            "22000",
            "cannot re-encrypt row (id)=(stray) of public.sk2: the envelope does not open with any of old_keys or with new_key",
        );
        assert!(!err.contains(KEY_A) && !err.contains(KEY_B));
        expect_error(
            &format!("SELECT * FROM credential_reencrypt({k_a}, {k_b}, 'sk2')"),
            "22000",
            "does not open with old_key or new_key",
        );
        assert_eq!(snapshot("sk2"), before);
    }

    #[pg_test]
    fn bad_key_lists_are_refused_by_argument_and_position_never_by_value() {
        create_profiles("sk3");
        seed("sk3", 3, 0, KEY_A);
        let before = snapshot("sk3");
        let (k_a, k_b, k_c) = (quote(KEY_A), quote(KEY_B), quote(KEY_C));
        // KEY_A without its padding: the same 32 bytes, spelt differently.
        let k_a2 = quote(KEY_A.trim_end_matches('='));
        let cases = [
            (
                format!("credential_reencrypt('{{}}'::text[], {k_b}, 'sk3')"),
                "old_keys holds no key",
            ),
            (
                format!("credential_reencrypt(NULL::text[], {k_b}, 'sk3')"),
                "old_keys must not be NULL",
            ),
            (
                format!("credential_reencrypt(ARRAY[{k_a}, NULL], {k_b}, 'sk3')"),
                "old_keys[2] is not a valid key: it is NULL",
            ),
            (
                format!("credential_reencrypt(ARRAY[{k_c}, {k_a}, 'Zm9v'], {k_b}, 'sk3')"),
                "old_keys[3] is not a valid key",
            ),
            (
                format!("credential_reencrypt(ARRAY[{k_c}, {k_a}, {k_a2}], {k_b}, 'sk3')"),
                "old_keys[3] is the same key as old_keys[2]",
            ),
            (
                format!("credential_reencrypt(ARRAY[{k_a}, {k_b}], {k_b}, 'sk3')"),
                "new_key is the same key as old_keys[2]",
            ),
            (
                format!("credential_reencrypt(ARRAY[{k_a}], NULL, 'sk3')"),
                "new_key is not a valid key",
            ),
            (
                format!("credential_reencrypt_value(secret, ARRAY[{k_a}, {k_a}], {k_b}) FROM sk3"),
                "old_keys[2] is the same key as old_keys[1]",
            ),
            (
                format!("credential_reencrypt_value(secret::text, ARRAY[{k_b}], {k_b}) FROM sk3"),
                "new_key is the same key as old_keys[1]",
            ),
            (
                format!(
                    "credential_rotate._credential_batched_start(ARRAY[NULL, {k_a}], {k_b}, 10)"
                ),
                "old_keys[1] is not a valid key: it is NULL",
            ),
            (
                format!("credential_key_census(ARRAY[{k_a}, {k_b}, {k_a2}], 'sk3')"),
                "keys[3] is the same key as keys[1]",
            ),
            (
                "credential_key_census('{}'::text[], 'sk3')".to_owned(),
                "keys holds no key",
            ),
            (
                "credential_key_census(NULL, 'sk3')".to_owned(),
                "keys must not be NULL",
            ),
        ];
        for (call, message) in cases {
            let err = expect_error(&format!("SELECT {call}"), "22023", message);
            for key in [KEY_A, KEY_B, KEY_C, KEY_A.trim_end_matches('=')] {
                assert!(!err.contains(key), "{err}");
            }
        }
        assert_eq!(snapshot("sk3"), before);
    }

    #[pg_test]
    fn the_census_counts_each_key_in_the_order_given_and_changes_nothing() {
        create_profiles("sk4");
        seed_under("sk4", "a", 4, KEY_A);
        seed_under("sk4", "b", 2, KEY_B);
        seed_under("sk4", "c", 1, KEY_C);
        run("INSERT INTO sk4 (id, name) VALUES ('e1', 'e1'), ('e2', 'e2')");
        run(r#"INSERT INTO sk4 (id, name, secret) VALUES ('m', 'm', '{"algorithm":"rot13"}')"#);
        let before = snapshot("sk4");
        let (fa, fb, fc) = (fingerprint(KEY_A), fingerprint(KEY_B), fingerprint(KEY_C));
        assert_eq!(
            census(&[KEY_B, KEY_A], ", 'sk4'"),
            format!("{fb}|readable|2\n{fa}|readable|4\n-|not_readable|1\n-|empty|2\n-|malformed|1")
        );
        assert_eq!(
            census(&[KEY_C, KEY_A, KEY_B], ", 'sk4', 'secret'"),
            format!("{fc}|readable|1\n{fa}|readable|4\n{fb}|readable|2\n-|not_readable|0\n-|empty|2\n-|malformed|1")
        );
        // The json and text paths agree with the jsonb one.
        run("ALTER TABLE sk4 ALTER secret DROP DEFAULT, ALTER secret TYPE text USING secret::text");
        assert_eq!(
            census(&[KEY_B, KEY_A], ", 'sk4'"),
            format!("{fb}|readable|2\n{fa}|readable|4\n-|not_readable|1\n-|empty|2\n-|malformed|1")
        );
        assert_eq!(snapshot("sk4"), before);
        // Nothing is left behind: a verification of the same backend starts clean.
        assert_eq!(verify(KEY_A, ", 'sk4'"), (4, 3, 2, 1));
        // An empty table: every status row is still there, at 0.
        create_profiles("sk4_empty");
        assert_eq!(
            census(&[KEY_A], ", 'sk4_empty'"),
            format!("{fa}|readable|0\n-|not_readable|0\n-|empty|0\n-|malformed|0")
        );
    }

    #[pg_test]
    fn the_census_needs_the_privileges_of_credential_verify_and_refuses_row_level_security() {
        create_rls_table("sk5");
        run("CREATE ROLE sk5_viewer NOLOGIN");
        run(
            "GRANT EXECUTE ON FUNCTION credential_key_census(text[], text, text),
               credential_verify(text, text, text) TO sk5_viewer",
        );
        let before = snapshot("sk5");
        let census_call = format!(
            "SELECT * FROM credential_key_census(ARRAY[{}], 'sk5')",
            quote(KEY_A)
        );
        let verify_call = format!("SELECT * FROM credential_verify({}, 'sk5')", quote(KEY_A));
        // Without SELECT on the table, then with it under a policy that hides rows: refused
        // exactly as credential_verify is.
        for grant in ["", "GRANT SELECT ON sk5 TO sk5_viewer"] {
            if !grant.is_empty() {
                run(grant);
            }
            run("SET ROLE sk5_viewer");
            let census_err = expect_error(&census_call, "42501", "");
            let verify_err = expect_error(&verify_call, "42501", "");
            run("RESET ROLE");
            assert_eq!(census_err, verify_err);
            assert!(!census_err.contains(KEY_A));
        }
        run("SET ROLE sk5_viewer");
        expect_error(
            &census_call,
            "42501",
            "row-level security is active on public.sk5",
        );
        run("RESET ROLE");
        run("REVOKE EXECUTE ON FUNCTION credential_key_census(text[], text, text) FROM sk5_viewer");
        run("SET ROLE sk5_viewer");
        expect_error(
            &census_call,
            "42501",
            "permission denied for function credential_key_census",
        );
        run("RESET ROLE");
        assert_eq!(snapshot("sk5"), before);
        // The owner (a superuser here) sees every row.
        assert_eq!(
            census(&[KEY_A], ", 'sk5'"),
            format!(
                "{}|readable|10\n-|not_readable|0\n-|empty|2\n-|malformed|0",
                fingerprint(KEY_A)
            )
        );
    }

    #[pg_test]
    fn reencrypt_value_from_several_keys_follows_keys_that_change_from_row_to_row() {
        run("CREATE TABLE sk6 (id int PRIMARY KEY, olds text[], k_new text, secret jsonb)");
        run(&format!(
            "INSERT INTO sk6 VALUES
               (1, ARRAY[{a}, {b}], {c}, credential_encrypt('{{\"n\":1}}'::text, {b})),
               (2, ARRAY[{a}, {b}], {c}, credential_encrypt('{{\"n\":2}}'::text, {a})),
               (3, ARRAY[{c}], {a}, credential_encrypt('{{\"n\":3}}'::text, {c})),
               (4, ARRAY[{b}, {c}], {a}, '{{}}')",
            a = quote(KEY_A),
            b = quote(KEY_B),
            c = quote(KEY_C)
        ));
        run("UPDATE sk6 SET secret = credential_reencrypt_value(secret, olds, k_new)");
        assert_eq!(
            one::<String>(
                "SELECT string_agg(coalesce(credential_decrypt(secret, k_new), '-'), ',' ORDER BY id) FROM sk6"
            )
            .as_deref(),
            Some(r#"{"n":1},{"n":2},{"n":3},-"#)
        );
        // The text form of the value function too, and an already-current value is unchanged.
        run("UPDATE sk6 SET secret = credential_reencrypt_value(secret::text, olds, k_new)::jsonb WHERE id = 1");
        assert_eq!(
            one::<String>("SELECT credential_decrypt(secret, k_new) FROM sk6 WHERE id = 1")
                .as_deref(),
            Some(r#"{"n":1}"#)
        );
    }

    #[pg_test]
    fn the_batch_helper_from_several_keys_reports_the_rows_each_key_opened() {
        create_profiles("sk7");
        seed_under("sk7", "a", 3, KEY_A);
        seed_under("sk7", "b", 2, KEY_B);
        // State for two old keys: batches, scanned, updated, already, empty, window, end, opened.
        let row = one::<String>(&format!(
            "SELECT (resume IS NULL)::text || ' ' || state::text
               FROM credential_rotate._credential_reencrypt_batch(ARRAY[{}, {}], {}, 'sk7', 'secret', 10, NULL,
                                                '{{0,0,0,0,0,16,-1,0,0}}')",
            quote(KEY_B),
            quote(KEY_A),
            quote(KEY_C)
        ));
        assert_eq!(row.as_deref(), Some("true {0,5,5,0,0,16,-1,2,3}"));
        assert_eq!(verify(KEY_C, ", 'sk7'"), (5, 0, 0, 0));
    }
}
