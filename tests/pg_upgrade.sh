#!/usr/bin/env bash
# pg_upgrade across a major version with the extension, the application's own path from
# postgres:16 to 17 (docs/install.md, "Upgrading PostgreSQL to a new major version"):
#   1. a 16 cluster, from a fresh wheel tree with the 16 package's files: the extension, the
#      library preloaded by ALTER DATABASE … SET, Node-sealed rows rotated three times (three
#      audit rows);
#   2. `pg_upgrade --check` against a fresh 17 tree without the extension must refuse, naming
#      the missing library;
#   3. the 17 package's files installed into the 17 tree: `pg_upgrade --check`, `pg_upgrade`;
#   4. on 17: the extension's version, the preload, its catalog equal to a fresh CREATE
#      EXTENSION's on 17, the audit rows and the sealed rows unchanged, credential_verify with
#      the current key (not_readable = 0), a rotation back, and Node opening every row with
#      that key.
#   tests/pg_upgrade.sh [OLD NEW]    (default: 16 17; the artifacts in CREDENTIAL_ROTATE_DIST,
#                                     as scripts/test.sh passes them, or built by scripts/package.sh)
# Both sides are wheel trees: Debian's 15 stamps a private column option on every column that
# other builds refuse to restore, so 15 -> 16 fails here for reasons not the extension's. Names
# of the extension's internal objects are never written here (the audit table is found as the
# extension's configuration table, objects as its members): only the entry points, called
# unqualified as an application calls them. Port CREDENTIAL_ROTATE_PACKAGE_PORT (default 54795),
# its own scratch trees and clusters; never touches the trees of PG_TREES or the system.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"
OLD_MAJOR=${1:-16}
NEW_MAJOR=${2:-17}
PORT=${CREDENTIAL_ROTATE_PACKAGE_PORT:-54795}
load_test_keys
export KEY_A=$OLD KEY_B=$NEW
source tests/lib/artifacts.sh
source tests/lib/catalog.sh
SCRATCH=$(mktemp -d /tmp/credential_rotate-pg_upgrade.XXXXXX)
chmod 755 "$SCRATCH"
ARTIFACTS_BUILT=
failures=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }

artifacts_for "$OLD_MAJOR" "$NEW_MAJOR"
OLD_TREE=$(fresh_wheel_tree "$OLD_MAJOR" "$SCRATCH/old")
NEW_TREE=$(fresh_wheel_tree "$NEW_MAJOR" "$SCRATCH/new")
install_into_tree "$OLD_TREE" "$OLD_MAJOR" "$(deb_of "$OLD_MAJOR")"
OLD_DATA=$SCRATCH/data/old
NEW_DATA=$SCRATCH/data/new
SOCK=$SCRATCH/data/sock
# pg_upgrade writes its logs and scripts into its working directory.
WORK=$SCRATCH/data/work
mkdir -p "$SOCK" "$WORK"
chown -R postgres:postgres "$SCRATCH/data"
export PGHOST=$SOCK PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres
running=

as_postgres() { sudo -u postgres env -C "$WORK" "$@"; }
# initdb of tree $1 into $2: the same encoding, locale and checksums on both sides (pg_upgrade
# requires them equal, and 18's initdb turns checksums on by default).
init_cluster() { as_postgres "$1/bin/initdb" -D "$2" -A trust -U postgres -E UTF8 --locale=C -k >/dev/null; }
start() {
    as_postgres "$1/bin/pg_ctl" -D "$2" -l "$SCRATCH/data/server-$(basename "$2").log" -w -t 600 \
        -o "-p $PORT -k $SOCK -c listen_addresses=''" start >/dev/null
    running="$1 $2"
    PATH=$1/bin:$CREDENTIAL_ROTATE_BASE_PATH
}
stop() {
    [ -n "$running" ] || return 0
    # shellcheck disable=SC2086 # "tree datadir"
    set -- $running
    as_postgres "$1/bin/pg_ctl" -D "$2" -m fast -w -t 600 stop >/dev/null || true
    running=
}
cleanup() {
    stop
    rm -rf "$SCRATCH"
    [ -z "$ARTIFACTS_BUILT" ] || rm -rf "$DIST"
}
trap cleanup EXIT
pg_upgrade_run() {
    as_postgres "$NEW_TREE/bin/pg_upgrade" -b "$OLD_TREE/bin" -B "$NEW_TREE/bin" \
        -d "$OLD_DATA" -D "$NEW_DATA" -p "$PORT" -P "$PORT" -s "$SOCK" -U postgres "$@"
}

# pg_upgrade restores an extension's object whose privileges are the default for its kind
# (a function executable by PUBLIC, a table only its owner's) with a NULL ACL and no initial
# privileges, where CREATE EXTENSION wrote them out: the same privileges, spelt differently.
# catalog() spells them as stored, so privileges are compared apart, as what each object
# grants.
without_acls() { sed -e '/^  initial privileges: /d' -e '/^  acl: /d' -e 's/^\(  kind: .\), acl: .*/\1/'; }
privileges() {
    q -d "$1" <<'SQL'
WITH members AS (
    SELECT d.classid, d.objid
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
     WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass
       AND d.deptype = 'e' AND e.extname = 'credential_rotate' AND d.objsubid = 0
), acls AS (
    SELECT pg_catalog.pg_describe_object(m.classid, m.objid, 0) AS object,
           CASE m.classid
           WHEN 'pg_catalog.pg_proc'::regclass THEN
               (SELECT coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))
                  FROM pg_catalog.pg_proc p WHERE p.oid = m.objid)
           WHEN 'pg_catalog.pg_class'::regclass THEN
               (SELECT coalesce(c.relacl, pg_catalog.acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::pg_catalog."char", c.relowner))
                  FROM pg_catalog.pg_class c WHERE c.oid = m.objid)
           WHEN 'pg_catalog.pg_namespace'::regclass THEN
               (SELECT coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))
                  FROM pg_catalog.pg_namespace n WHERE n.oid = m.objid)
           WHEN 'pg_catalog.pg_type'::regclass THEN
               (SELECT coalesce(t.typacl, pg_catalog.acldefault('T', t.typowner))
                  FROM pg_catalog.pg_type t WHERE t.oid = m.objid)
           END AS acl
      FROM members m
)
SELECT a.object || ': ' || coalesce((SELECT pg_catalog.string_agg(x::text, ' ' ORDER BY x::text)
                                       FROM pg_catalog.unnest(a.acl) AS x), '-')
  FROM acls a
 ORDER BY 1;
SQL
}

log "pg$OLD_MAJOR: a cluster with the extension, rotated rows and audit rows"
init_cluster "$OLD_TREE" "$OLD_DATA"
start "$OLD_TREE" "$OLD_DATA"
q -c "CREATE DATABASE app"
q -d app -c "CREATE EXTENSION $EXT"
# The preload docs/security.md recommends, set per database: pg_upgrade carries it.
q -c "ALTER DATABASE app SET session_preload_libraries = '$EXT'"
seed app
for keys in "$KEY_A $KEY_B" "$KEY_B $KEY_A" "$KEY_A $KEY_B"; do
    # shellcheck disable=SC2086 # two keys
    got=$(rotate app $keys)
    [ "$got" = "$SEEDED_ROTATION" ] || fail "pg$OLD_MAJOR: a rotation counted $got, not $SEEDED_ROTATION"
done
AUDIT_BEFORE=$(audit_rows app)
ROWS_BEFORE=$(q -d app -c "SELECT pg_catalog.md5(pg_catalog.string_agg(id || ' ' || secret::text, E'\n' ORDER BY id))
                             FROM credential_profiles")
[ "$(grep -c . <<<"$AUDIT_BEFORE")" = 3 ] || fail "pg$OLD_MAJOR: $(grep -c . <<<"$AUDIT_BEFORE") audit rows, not 3"
echo "ok: pg$OLD_MAJOR: $EXT $(extversion app), 303 rows rotated three times, 3 audit rows"
stop

log "pg_upgrade --check without the extension's files in the $NEW_MAJOR tree must refuse"
init_cluster "$NEW_TREE" "$NEW_DATA"
if pg_upgrade_run --check >"$SCRATCH/check.log" 2>&1; then
    fail "pg_upgrade --check passed although the $NEW_MAJOR tree lacks $EXT"
else
    grep -q "references loadable libraries that are missing" "$SCRATCH/check.log" ||
        { cat "$SCRATCH/check.log" >&2; fail "pg_upgrade --check failed, but not for the missing library"; }
    grep -rqs "\$libdir/$EXT" "$NEW_DATA/pg_upgrade_output.d" ||
        fail "pg_upgrade's loadable_libraries.txt does not name \$libdir/$EXT"
    echo "ok: pg_upgrade --check refuses: \$libdir/$EXT is missing from the new installation"
fi

log "the pg$NEW_MAJOR package's files into the $NEW_MAJOR tree, then pg_upgrade"
install_into_tree "$NEW_TREE" "$NEW_MAJOR" "$(deb_of "$NEW_MAJOR")"
pg_upgrade_run --check >"$SCRATCH/check.log" 2>&1 ||
    { cat "$SCRATCH/check.log" >&2; fail "pg_upgrade --check"; exit 1; }
pg_upgrade_run >"$SCRATCH/upgrade.log" 2>&1 ||
    { cat "$SCRATCH/upgrade.log" >&2; fail "pg_upgrade"; exit 1; }
grep -q "Upgrade Complete" "$SCRATCH/upgrade.log" || fail "pg_upgrade did not report Upgrade Complete"
echo "ok: pg_upgrade --check and pg_upgrade $OLD_MAJOR -> $NEW_MAJOR"

log "pg$NEW_MAJOR: the upgraded cluster"
start "$NEW_TREE" "$NEW_DATA"
server=$(q -c "SHOW server_version_num")
[ "${server:0:2}" = "$NEW_MAJOR" ] || fail "the upgraded server is $server"
[ "$(extversion app)" = "$VERSION" ] || fail "after pg_upgrade the extension is at $(extversion app), not $VERSION"
[ "$(q -d app -c "SHOW session_preload_libraries")" = "$EXT" ] ||
    fail "the database's session_preload_libraries did not survive pg_upgrade"
q -c "CREATE DATABASE fresh"
q -d fresh -c "CREATE EXTENSION $EXT"
upgraded=$(catalog app | without_acls)
fresh=$(catalog fresh | without_acls)
if [ "$upgraded" = "$fresh" ]; then
    echo "ok: the extension's catalog after pg_upgrade is a fresh install's on $NEW_MAJOR ($(grep -c '^function\|^procedure' <<<"$fresh") routines), privileges aside"
else
    fail "the extension's catalog after pg_upgrade differs from a fresh install's:"
    diff <(echo "$upgraded") <(echo "$fresh") >&2 || true
fi
upgraded=$(privileges app)
fresh=$(privileges fresh)
if [ "$upgraded" = "$fresh" ]; then
    echo "ok: every object of the extension grants the same privileges after pg_upgrade as after a fresh install"
else
    fail "the extension's privileges after pg_upgrade differ from a fresh install's:"
    diff <(echo "$upgraded") <(echo "$fresh") >&2 || true
fi
[ "$(audit_rows app)" = "$AUDIT_BEFORE" ] || fail "the audit rows changed in pg_upgrade"
[ "$(q -d app -c "SELECT pg_catalog.md5(pg_catalog.string_agg(id || ' ' || secret::text, E'\n' ORDER BY id))
                   FROM credential_profiles")" = "$ROWS_BEFORE" ] || fail "the sealed rows changed in pg_upgrade"
got=$(verify app "$KEY_B")
[ "$got" = "303 0 3 0" ] || fail "credential_verify with the current key: $got, not 303 0 3 0"
got=$(rotate app "$KEY_B" "$KEY_A")
[ "$got" = "$SEEDED_ROTATION" ] || fail "the rotation back counted $got, not $SEEDED_ROTATION"
got=$(verify app "$KEY_A")
[ "$got" = "303 0 3 0" ] || fail "credential_verify after the rotation back: $got, not 303 0 3 0"
got=$(node_opens app "$KEY_A")
[ "$got" = "$SEEDED_OPEN" ] || fail "after the rotation back, Node with key_a: $got"
after=$(audit_rows app)
[ -z "$(comm -23 <(echo "$AUDIT_BEFORE") <(echo "$after"))" ] && [ "$(grep -c . <<<"$after")" = 4 ] ||
    fail "the rotation on $NEW_MAJOR was not appended to the 3 audit rows"
echo "ok: pg$NEW_MAJOR: $EXT $VERSION, audit and sealed rows unchanged, every row verifies, a rotation back that Node opens"
stop

[ "$failures" -eq 0 ] || exit 1
echo "pg_upgrade $OLD_MAJOR -> $NEW_MAJOR with $EXT $VERSION: checked, upgraded, verified, rotated back"
