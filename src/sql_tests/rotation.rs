//! A rotation end to end: every row re-sealed, re-runs and rollbacks, bad rows, dry runs, column types, names and options.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::sql_tests::support::*;

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
}
