//! Privileges and row-level security: what PUBLIC may run, each overload granted alone, policies refused never filtered.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::sql_tests::support::*;

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
}
