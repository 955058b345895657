#!/usr/bin/env bash
# The upgrade paths. A database created with each previous release (0.1.0 and 0.2.0, their
# install scripts kept as released in sql/) runs a rotation on the new library before it is upgraded, then
# ALTER EXTENSION credential_rotate UPDATE: its catalog must then equal a fresh install's,
# object by object (definition, attributes, privileges, initial privileges, description), its
# audit rows must survive, and rotations must go on working.
# Needs the test cluster of scripts/test.sh (PG* variables) with the extension installed.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"
load_test_keys
RELEASES="0.1.0 0.2.0 0.3.0"
UPGRADED=credential_rotate_upgraded
FRESH=credential_rotate_fresh
failures=0

q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }
source tests/lib/catalog.sh

for db in "$UPGRADED" "$FRESH"; do
    q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
done
CURRENT=$(q -d postgres -c "SELECT default_version FROM pg_catalog.pg_available_extensions
                             WHERE name = 'credential_rotate'")

upgrade_from() {
    local PREVIOUS=$1
    [ "$CURRENT" != "$PREVIOUS" ] || fail "the current version is still $PREVIOUS"
    for db in "$UPGRADED" "$FRESH"; do
        q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    done
    # The previous release, with data and an audit row written by the new library.
    q -d "$UPGRADED" -c "CREATE EXTENSION credential_rotate VERSION '$PREVIOUS'" \
        -f tests/freeboard/credential_profiles.sql \
        -c "INSERT INTO credential_profiles (id, name, secret)
            SELECT 'p' || i, 'profile ' || i,
                   credential_encrypt(pg_catalog.jsonb_build_object('token', i), '$OLD')
              FROM pg_catalog.generate_series(1, 500) i"
    q -d "$UPGRADED" -c "SELECT * FROM credential_reencrypt('$OLD', '$NEW')" >/dev/null
    [ "$(q -d "$UPGRADED" -c "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'credential_rotate'")" = "$PREVIOUS" ] ||
        fail "the database was not created at $PREVIOUS"
    echo "ok: $PREVIOUS installed; its functions run on the $CURRENT library"

    q -d "$FRESH" -c "CREATE EXTENSION credential_rotate"
    before=$(catalog "$UPGRADED")
    fresh=$(catalog "$FRESH")
    # The comparison must be able to see a difference: the previous version's catalog is not
    # the current one's.
    [ "$before" != "$fresh" ] || fail "$PREVIOUS and $CURRENT have the same catalog: nothing to upgrade?"

    q -d "$UPGRADED" -c "ALTER EXTENSION credential_rotate UPDATE"
    after=$(catalog "$UPGRADED")
    if [ "$after" = "$fresh" ]; then
        echo "ok: ALTER EXTENSION UPDATE $PREVIOUS -> $CURRENT gives the catalog of a fresh install ($(grep -c '^function\|^procedure' <<<"$fresh") routines, every attribute, privilege and description)"
    else
        fail "upgraded and fresh catalogs differ:"
        diff <(echo "$after") <(echo "$fresh") >&2 || true
    fi
    grep -q "^extension credential_rotate $CURRENT" <<<"$after" || fail "not at $CURRENT after the update"
    undescribed=$(q -d "$UPGRADED" -c "
        SELECT pg_catalog.string_agg(d.objid::regprocedure::text, ', ')
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
         WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
           AND e.extname = 'credential_rotate' AND d.classid = 'pg_catalog.pg_proc'::regclass
           AND pg_catalog.obj_description(d.objid, 'pg_proc') IS NULL")
    [ -z "$undescribed" ] || fail "routines without a description after the upgrade: $undescribed"

    # Data and behaviour after the upgrade.
    [ "$(q -d "$UPGRADED" -c "SELECT count(*) FROM credential_rotate_audit WHERE updated = 500")" = 1 ] ||
        fail "the audit row written under $PREVIOUS did not survive"
    result=$(q -d "$UPGRADED" -c "SELECT updated FROM credential_reencrypt('$NEW', '$OLD')")
    [ "$result" = 500 ] || fail "a rotation after the upgrade re-sealed $result rows, not 500"
    [ "$(q -d "$UPGRADED" -c "SELECT readable FROM credential_verify('$OLD')")" = 500 ] ||
        fail "after the rollback rotation not every row opens with the old key"
    [ "$(q -d "$UPGRADED" -c "SELECT count(*) FROM credential_rotate_audit")" = 2 ] ||
        fail "the rotation after the upgrade was not audited"
    echo "ok: after the upgrade the audit trail is intact and rotations work both ways"

    for db in "$UPGRADED" "$FRESH"; do
        q -d postgres -c "DROP DATABASE $db"
    done
}

for release in $RELEASES; do
    upgrade_from "$release"
done
[ "$failures" -eq 0 ]
