//! The call's state and its audit row: helpers outside a call, code of other roles, volatility, failures that leave nothing behind, settings.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::sql_tests::support::*;

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
}
