# The extension's catalog as text, for comparing two databases (tests/upgrade.sh: an updated
# database and a fresh install; tests/pg_upgrade.sh: a database pg_upgrade brought to another
# major and a fresh install there). Sourced; needs q() (psql -At) and the PG* variables.
# shellcheck shell=bash

# Every object of the extension as one sorted block of text per object. Everything that can
# differ between two installs is in it, except OIDs and the session that created them.
catalog() {
    q -d "$1" <<'SQL'
WITH members AS (
    SELECT d.classid, d.objid, d.objsubid
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
     WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass
       AND d.deptype = 'e' AND e.extname = 'credential_rotate'
)
SELECT pg_catalog.pg_describe_object(m.classid, m.objid, m.objsubid)
       || E'\n  description: ' || coalesce(pg_catalog.obj_description(m.objid, m.classid::regclass::text), '-')
       || E'\n  initial privileges: ' || coalesce((
              SELECT pg_catalog.string_agg(i.objsubid || ' ' || i.privtype::text || ' ' || i.initprivs::text,
                                           ', ' ORDER BY i.objsubid, i.privtype)
                FROM pg_catalog.pg_init_privs i
               WHERE i.classoid = m.classid AND i.objoid = m.objid), '-')
       || CASE m.classid
          WHEN 'pg_catalog.pg_proc'::regclass THEN
              (SELECT E'\n  owner: ' || pg_catalog.pg_get_userbyid(p.proowner)
                      || E'\n  acl: ' || coalesce(p.proacl::text, '-')
                      || E'\n' || pg_catalog.pg_get_functiondef(p.oid)
                 FROM pg_catalog.pg_proc p WHERE p.oid = m.objid)
          WHEN 'pg_catalog.pg_class'::regclass THEN
              (SELECT E'\n  kind: ' || c.relkind::text || ', acl: ' || coalesce(c.relacl::text, '-')
                      || coalesce(E'\n  columns: ' || (
                             SELECT pg_catalog.string_agg(a.attname || ' '
                                        || pg_catalog.format_type(a.atttypid, a.atttypmod)
                                        || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                                        || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
                                        || coalesce(' default ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), '')
                                        || coalesce(' comment ' || pg_catalog.col_description(c.oid, a.attnum), ''),
                                        ', ' ORDER BY a.attnum)
                               FROM pg_catalog.pg_attribute a
                               LEFT JOIN pg_catalog.pg_attrdef ad
                                      ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
                      || coalesce(E'\n  constraints: ' || (
                             SELECT pg_catalog.string_agg(pg_catalog.pg_get_constraintdef(k.oid), ', '
                                        ORDER BY pg_catalog.pg_get_constraintdef(k.oid))
                               FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid), '')
                      || coalesce(E'\n  indexes: ' || (
                             SELECT pg_catalog.string_agg(pg_catalog.pg_get_indexdef(x.indexrelid), ', '
                                        ORDER BY pg_catalog.pg_get_indexdef(x.indexrelid))
                               FROM pg_catalog.pg_index x WHERE x.indrelid = c.oid), '')
                 FROM pg_catalog.pg_class c WHERE c.oid = m.objid)
          ELSE '' END
  FROM members m
 UNION ALL
SELECT 'extension ' || e.extname || ' ' || e.extversion
       || E'\n  description: ' || coalesce(pg_catalog.obj_description(e.oid, 'pg_extension'), '-')
       || E'\n  relocatable: ' || e.extrelocatable
       || E'\n  dumped: ' || coalesce((
              SELECT pg_catalog.string_agg(c.oid::regclass::text || ' where ' || coalesce(w, '-'), ', '
                                           ORDER BY c.oid::regclass::text)
                FROM ROWS FROM (pg_catalog.unnest(e.extconfig), pg_catalog.unnest(e.extcondition)) AS x(cfg, w)
                JOIN pg_catalog.pg_class c ON c.oid = x.cfg), '-')
  FROM pg_catalog.pg_extension e WHERE e.extname = 'credential_rotate'
 ORDER BY 1;
SQL
}
