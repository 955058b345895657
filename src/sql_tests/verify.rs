//! Verification and the census, and the standard errors of a call's arguments.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::sql_tests::support::*;

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
}
