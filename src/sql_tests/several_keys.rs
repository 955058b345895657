//! Several old keys, and credential_reencrypt_value in a caller's own UPDATE.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::sql_tests::support::*;

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
