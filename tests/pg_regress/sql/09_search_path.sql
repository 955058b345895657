-- Another role's objects on the caller's search_path. mallory may create objects in public
-- (every role could before PostgreSQL 15; the application's role can). She plants there a
-- shadow of every operator and function of pg_catalog that SQL can declare, the cross-type
-- operators that 0.3.0's statements fell for, and a domain named jsonb; each shadow records
-- the statement it ran in (keys included) and tries to make mallory a superuser. Then the
-- DBA, a superuser, calls every entry point with public ahead of pg_catalog on the
-- search_path, the order that lets even an exact-type shadow win.
\set old_key 'y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q='
\set new_key 'PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc='
CREATE TABLE shadowed (LIKE credential_profiles INCLUDING ALL);
INSERT INTO shadowed (id, name, secret)
  SELECT 'h-' || i, 'profile ' || i,
         CASE WHEN i = 5 THEN '{}'::jsonb ELSE credential_encrypt(format('{"token":"t%s"}', i), :'old_key') END
    FROM generate_series(1, 20) i;
CREATE TABLE shadowed_text (id text PRIMARY KEY, secret text);
INSERT INTO shadowed_text SELECT id, secret::text FROM shadowed;
CREATE ROLE mallory NOLOGIN;
GRANT CREATE ON SCHEMA public TO mallory;
CREATE TABLE mallory_log (what text, query text);
GRANT INSERT ON mallory_log TO PUBLIC;
SET ROLE mallory;
CREATE FUNCTION public.mallory_steal(what text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.mallory_log VALUES (what, pg_catalog.current_query());
  BEGIN
    EXECUTE 'ALTER ROLE mallory SUPERUSER';
  EXCEPTION WHEN OTHERS THEN NULL;
  END;
  RETURN true;
END $$;
-- Every operator of pg_catalog, shadowed in public with the same argument and result types.
DO $$
DECLARE o record; n integer := 0;
BEGIN
  FOR o IN
    SELECT op.oprname, op.oprleft, op.oprright, op.oprresult FROM pg_catalog.pg_operator op
     WHERE op.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_type t
                        WHERE t.oid IN (op.oprleft, op.oprright, op.oprresult) AND t.typtype = 'p')
  LOOP
    n := n + 1;
    EXECUTE pg_catalog.format(
      'CREATE FUNCTION public.shadow_op_%s(%s) RETURNS %s LANGUAGE plpgsql AS $f$BEGIN PERFORM public.mallory_steal(%L); RETURN NULL; END$f$',
      n, pg_catalog.concat_ws(', ', CASE WHEN o.oprleft <> 0 THEN o.oprleft::pg_catalog.regtype::text END,
                             o.oprright::pg_catalog.regtype::text),
      o.oprresult::pg_catalog.regtype, 'operator ' || o.oprname);
    EXECUTE pg_catalog.format('CREATE OPERATOR public.%s (%s RIGHTARG = %s, FUNCTION = public.shadow_op_%s)',
      o.oprname, CASE WHEN o.oprleft <> 0 THEN 'LEFTARG = ' || o.oprleft::pg_catalog.regtype::text || ',' ELSE '' END,
      o.oprright::pg_catalog.regtype, n);
  END LOOP;
END $$;
-- Every function of pg_catalog (but set-returning ones and those of pseudo-types), likewise.
DO $$
DECLARE f record;
BEGIN
  FOR f IN
    SELECT p.proname, pg_catalog.oidvectortypes(p.proargtypes) AS args, p.prorettype::pg_catalog.regtype AS ret
      FROM pg_catalog.pg_proc p
     WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace AND p.prokind = 'f' AND NOT p.proretset
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_type t
                        WHERE (t.oid = ANY (p.proargtypes) OR t.oid = p.prorettype) AND t.typtype = 'p')
  LOOP
    BEGIN
      EXECUTE pg_catalog.format(
        'CREATE FUNCTION public.%I(%s) RETURNS %s LANGUAGE plpgsql AS $f$BEGIN PERFORM public.mallory_steal(%L); RETURN NULL; END$f$',
        f.proname, f.args, f.ret, 'function ' || f.proname);
    EXCEPTION WHEN duplicate_function THEN NULL;
    END;
  END LOOP;
END $$;
-- The cross-type comparisons 0.3.0 wrote with a bare operator.
CREATE FUNCTION public.cross(oid, regclass) RETURNS boolean LANGUAGE sql AS 'SELECT public.mallory_steal(''oid = regclass'')';
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.cross);
CREATE FUNCTION public.cross(regclass, oid) RETURNS boolean LANGUAGE sql AS 'SELECT public.mallory_steal(''regclass = oid'')';
CREATE OPERATOR public.= (LEFTARG = regclass, RIGHTARG = oid, FUNCTION = public.cross);
CREATE FUNCTION public.cross(bigint, text) RETURNS text LANGUAGE sql AS 'SELECT public.mallory_steal(''bigint || text'')::text';
CREATE OPERATOR public.|| (LEFTARG = bigint, RIGHTARG = text, FUNCTION = public.cross);
CREATE FUNCTION public.cross(oid, integer) RETURNS boolean LANGUAGE sql AS 'SELECT public.mallory_steal(''oid >= integer'')';
CREATE OPERATOR public.>= (LEFTARG = oid, RIGHTARG = integer, FUNCTION = public.cross);
-- A domain named jsonb, and a table of hers whose secret column has that type.
CREATE DOMAIN public.jsonb AS pg_catalog.jsonb CHECK (public.mallory_steal('domain jsonb'));
CREATE TABLE public.mallory_profiles (id text PRIMARY KEY, secret public.jsonb);
RESET ROLE;
SELECT count(*) > 500 AS operators_planted FROM pg_operator WHERE oprnamespace = 'public'::regnamespace;
SELECT count(*) > 1500 AS functions_planted FROM pg_proc WHERE pronamespace = 'public'::regnamespace;

-- The DBA's session.
SET search_path = public, pg_catalog;
SELECT * FROM credential_verify(:'old_key', 'shadowed');
SELECT * FROM credential_verify(:'old_key', 'shadowed_text');
SELECT * FROM credential_verify_rows(:'new_key', 'shadowed');
SELECT * FROM credential_key_census(ARRAY[:'old_key', :'new_key'], 'shadowed');
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'shadowed', dry_run => true);
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'shadowed');
SELECT * FROM credential_reencrypt(ARRAY[:'new_key'], :'old_key', 'shadowed_text', touch_updated_at => false);
SELECT * FROM credential_reencrypt(:'old_key', :'new_key', 'shadowed_text');
CALL credential_reencrypt_batched(:'new_key', :'old_key', batch_rows => 7, target_table => 'shadowed');
CALL credential_reencrypt_batched(ARRAY[:'old_key'], :'new_key', batch_rows => 7, target_table => 'shadowed');
-- (The session's own comparisons name pg_catalog's operator: hers would win here too.)
SELECT credential_key_fingerprint(:'new_key') OPERATOR(pg_catalog.=) credential_key_fingerprint(:'new_key') AS fingerprint;
SELECT credential_decrypt(credential_encrypt('{"a":1}'::pg_catalog.jsonb, :'new_key'), :'new_key') AS sealed_and_opened;
SELECT credential_decrypt(credential_reencrypt_value(secret, :'new_key', :'old_key'), :'old_key') AS one_value
  FROM shadowed WHERE id OPERATOR(pg_catalog.=) 'h-1';
-- Her domain is not jsonb: the type is checked by OID, not by name.
SELECT * FROM credential_verify(:'old_key', 'mallory_profiles');
RESET search_path;

-- Nothing of hers ran, and she is not a superuser.
SELECT count(*) AS mallory_code_ran FROM mallory_log;
SELECT what, count(*) FROM mallory_log GROUP BY 1 ORDER BY 1;
SELECT rolsuper AS mallory_is_superuser FROM pg_roles WHERE rolname = 'mallory';
SELECT * FROM credential_verify(:'new_key', 'shadowed');
SELECT count(*) AS audit_rows FROM credential_rotate_audit WHERE target_table IN ('public.shadowed', 'public.shadowed_text');
DROP OWNED BY mallory CASCADE;
REVOKE CREATE ON SCHEMA public FROM mallory;
DROP ROLE mallory;
DROP TABLE shadowed, shadowed_text, mallory_log;
DELETE FROM credential_rotate_audit;
