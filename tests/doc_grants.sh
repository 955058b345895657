#!/usr/bin/env bash
# The documents work as written for a rotation role: the grant block of docs/security.md runs as
# written (twice, and whole under psql -1), then a login role holding only credential_rotator
# runs every SQL block of docs/runbook.md, in order, in one psql session (its key files made
# here in place of the secret store's), and the migration script with several old keys.
# Needs the test cluster of scripts/test.sh (PG* variables).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
DB=credential_rotate_docs
source "$REPO_ROOT/tests/lib/cluster.sh"
load_test_keys
SCRATCH=$(mktemp -d /tmp/credential_rotate-docs.XXXXXX)
chmod 755 "$SCRATCH"
trap 'rm -rf "$SCRATCH"' EXIT

# The fenced ```sql block of docs/security.md that creates credential_rotator.
awk '/^```sql$/{on=1; block=""; next} on && /^```$/{on=0; if (block ~ /CREATE ROLE credential_rotator/) print block; next}
     on{block = block $0 "\n"}' docs/security.md >"$SCRATCH/grants.sql"
[ -s "$SCRATCH/grants.sql" ] || fatal "no grant block (CREATE ROLE credential_rotator) in docs/security.md"
# Every fenced ```sql block of docs/runbook.md, in order, as one session.
awk '/^ *```sql$/{on=1; next} on && /^ *```$/{on=0; print ""; next} on{sub(/^   /, ""); print}' \
    docs/runbook.md >"$SCRATCH/runbook.sql"
[ -s "$SCRATCH/runbook.sql" ] || fatal "no SQL block in docs/runbook.md"

fresh_database
seed_profiles 300
OLDER=$(q -c "SELECT credential_generate_key()")
# Roles are cluster-wide: another version's run of this test, or an earlier one, left them.
q -c "DROP ROLE IF EXISTS runbook_dba" -c "DROP OWNED BY credential_rotator" -c "DROP ROLE credential_rotator" \
    >/dev/null 2>&1 || true

# The block as written, twice (a DBA runs it again on the next rotation), whole under psql -1.
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -1 -f "$SCRATCH/grants.sql" ||
    fatal "the grant block of docs/security.md fails under psql -1"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -1 -f "$SCRATCH/grants.sql" ||
    fatal "the grant block of docs/security.md fails when run a second time"
q -c "CREATE ROLE runbook_dba LOGIN IN ROLE credential_rotator"
ok "the grant block of docs/security.md runs as written, twice, under psql -1"

# The secret store: one key per file, as the runbook reads them; its step 1 writes the new one.
mkdir -p "$SCRATCH/secrets"
printf '%s\n' "$OLD" >"$SCRATCH/secrets/credential_key_old"
printf '%s\n' "$OLDER" >"$SCRATCH/secrets/credential_key_older"
chmod 644 "$SCRATCH"/secrets/*
sed -i "s|/run/secrets/|$SCRATCH/secrets/|g" "$SCRATCH/runbook.sql"

if psql -X -q -v ON_ERROR_STOP=1 -U runbook_dba -d "$DB" -f "$SCRATCH/runbook.sql" \
    >"$SCRATCH/runbook.out" 2>&1; then
    ok "every SQL block of docs/runbook.md runs as runbook_dba, who holds only credential_rotator"
else
    failed "docs/runbook.md as runbook_dba: $(grep -m1 -B2 ERROR "$SCRATCH/runbook.out")"
fi
NEW_FILE_KEY=$(cat "$SCRATCH/secrets/credential_key_new")
[ "$(q -c "SELECT readable FROM credential_verify('$NEW_FILE_KEY')")" = "$SEALED" ] ||
    failed "after the runbook's session the rows do not all open with the key its step 1 generated"
grep -q "batches of at most 50000 rows" "$SCRATCH/runbook.out" ||
    failed "the batched rotation's first NOTICE is not the one docs/runbook.md shows"

# The migration script, as the same role, from two old keys to a third.
(cd examples && { [ -d node_modules/pg ] || npm ci --no-audit --no-fund --silent; }) ||
    fatal "npm ci in examples/"
LAST=$(q -c "SELECT credential_generate_key()")
# DATABASE_URL for the Unix socket, in the form docs/runbook.md shows.
if out=$(DATABASE_URL="postgresql:///$DB?host=$PGHOST&port=$PGPORT&user=runbook_dba" \
    CREDENTIAL_ENCRYPTION_KEY_OLD="$NEW_FILE_KEY,$OLDER" CREDENTIAL_ENCRYPTION_KEY_NEW="$LAST" \
    node examples/rotate-credentials.mjs 2>&1); then
    ok "the migration script with two old keys, as runbook_dba: ${out%%$'\n'*}"
else
    failed "the migration script as runbook_dba: $out"
fi
[ "$(q -c "SELECT not_readable + malformed FROM credential_verify('$LAST')")" = 0 ] ||
    failed "after the migration script some rows do not open with its new key"

[ "$failures" -eq 0 ]
