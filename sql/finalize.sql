-- Nothing in this extension is executable by PUBLIC: every function either takes a key or
-- rewrites secrets. A rotation role gets EXECUTE explicitly (see README, "Privileges").
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
