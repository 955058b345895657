-- Nothing in this extension is executable by PUBLIC: every function either takes a key or
-- rewrites secrets. A rotation role gets EXECUTE explicitly (see docs/security.md, "Privileges").
DO $$
DECLARE
    fn regprocedure;  -- functions and procedures alike
BEGIN
    FOR fn IN
        SELECT d.objid::regprocedure
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
         WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.classid = 'pg_catalog.pg_proc'::regclass
           AND d.deptype = 'e'
           AND e.extname = 'credential_rotate'
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', fn);
    END LOOP;
END
$$;
-- ...except the internal helpers, which do nothing on their own, so that a rotation role
-- needs EXECUTE only on the functions it calls by name (docs/security.md, "Privileges"):
-- - the per-row helpers and _credential_audit_append raise unless a credential_reencrypt or
--   credential_verify call of the same backend, in the same (sub)transaction, is running or
--   has just handed them its state; they never take a key;
-- - _credential_check_keys only checks two keys and reads or writes nothing;
-- - _credential_reencrypt_blocks refuses unless the caller may execute
--   credential_reencrypt_batched.
GRANT EXECUTE ON FUNCTION
    _credential_reencrypt_row(oid, tid, text),
    _credential_reencrypt_row_jsonb(oid, tid, jsonb),
    _credential_reencrypt_take(tid),
    _credential_reencrypt_take_jsonb(tid, jsonb),
    _credential_status(text),
    _credential_status_jsonb(jsonb),
    _credential_audit_append(),
    _credential_check_keys(text, text),
    _credential_reencrypt_blocks(text, text, text, text, bigint, bigint)
  TO PUBLIC;
-- The same for several old keys (0.3.0); the census helpers raise unless a
-- credential_key_census call of the same backend is running.
GRANT EXECUTE ON FUNCTION
    _credential_check_keys(text[], text),
    _credential_reencrypt_blocks(text[], text, text, text, bigint, bigint),
    _credential_census_status(text),
    _credential_census_status_jsonb(jsonb)
  TO PUBLIC;
