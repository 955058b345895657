-- Nothing in this extension is executable by PUBLIC: every function either takes a key or
-- rewrites secrets. A rotation role gets EXECUTE explicitly (see docs/security.md, "Privileges").
-- Like every statement of the extension's scripts, it names each operator and compares values
-- of one type: the installing superuser's search_path may hold another role's objects.
DO $$
DECLARE
    fn pg_catalog.regprocedure;  -- functions and procedures alike
BEGIN
    FOR fn IN
        SELECT d.objid::pg_catalog.regprocedure
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid
         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid
           AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid
           AND d.deptype OPERATOR(pg_catalog.=) 'e'
           AND e.extname OPERATOR(pg_catalog.=) 'credential_rotate'
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', fn);
    END LOOP;
END
$$;
-- ...except the internal helpers, which do nothing on their own, so that a rotation role
-- needs EXECUTE only on the functions it calls by name (docs/security.md, "Privileges"):
-- - the per-row helpers and _credential_audit_append raise unless a credential_reencrypt,
--   credential_verify or credential_key_census call of the same backend, in the same
--   (sub)transaction, is running or has just handed them its state; they never take a key;
-- - _credential_check_keys only checks two keys and reads or writes nothing;
-- - _credential_batched_start, _credential_reencrypt_batch and the procedure
--   _credential_reencrypt_batched (which runs only those) refuse unless the caller may execute
--   a form of credential_reencrypt_batched.
GRANT USAGE ON SCHEMA credential_rotate TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    credential_rotate._credential_reencrypt_row(oid, tid, text),
    credential_rotate._credential_reencrypt_row_jsonb(oid, tid, jsonb),
    credential_rotate._credential_reencrypt_take(tid),
    credential_rotate._credential_reencrypt_take_jsonb(tid, jsonb),
    credential_rotate._credential_status(text),
    credential_rotate._credential_status_jsonb(jsonb),
    credential_rotate._credential_census_status(text),
    credential_rotate._credential_census_status_jsonb(jsonb),
    credential_rotate._credential_audit_append(),
    credential_rotate._credential_check_keys(text, text),
    credential_rotate._credential_batched_start(text[], text, integer),
    credential_rotate._credential_reencrypt_batch(text[], text, text, text, integer, tid, bigint[])
  TO PUBLIC;
GRANT EXECUTE ON PROCEDURE
    credential_rotate._credential_reencrypt_batched(text[], text, integer, text, text)
  TO PUBLIC;
