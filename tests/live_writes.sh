#!/usr/bin/env bash
# A rotation while the application keeps writing: pgbench clients update random rows with
# secrets sealed under the old key (as an instance still running with the old key would).
# No write is lost; after the rotation commits every row opens with the new key except rows
# the application wrote after it, which credential_verify reports and a re-run rotates.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
ROWS=${LIVE_ROWS:-50000}
DB=credential_rotate_live
source "$REPO_ROOT/tests/lib/cluster.sh"
load_test_keys

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
q <<SQL
CREATE EXTENSION credential_rotate;
CREATE TABLE credential_profiles (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
  secret JSONB NOT NULL DEFAULT '{}'::jsonb, updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW());
INSERT INTO credential_profiles (id, name, secret)
  SELECT 'cp-' || i, 'profile ' || i, credential_encrypt(format('{"token":"s%s"}', i), '$OLD')
    FROM generate_series(1, $ROWS) i;
-- Every application write, in the order the row locks let them commit.
CREATE SEQUENCE write_seq;
CREATE TABLE writes (seq bigint PRIMARY KEY, id text NOT NULL, at timestamptz NOT NULL);
SQL

script=$(mktemp)
cat >"$script" <<SQL
\set n random(1, $ROWS)
BEGIN;
UPDATE credential_profiles
   SET secret = credential_encrypt(format('{"token":"w%s"}', nextval('write_seq')), '$OLD'),
       updated_at = now()
 WHERE id = 'cp-' || :n;
INSERT INTO writes VALUES (currval('write_seq'), 'cp-' || :n, clock_timestamp());
COMMIT;
SQL

"$PG_BIN/pgbench" -n -c 3 -T 8 -f "$script" "$DB" >"$script.out" 2>&1 &
bench=$!
sleep 2
rotation_started=$(q -c "SELECT clock_timestamp()")
q -c "SELECT format('rotation under load: scanned=%s updated=%s already_current=%s', scanned, updated, already_current)
        FROM credential_reencrypt('$OLD', '$NEW')"
wait "$bench" || { cat "$script.out" >&2; fatal "pgbench failed"; }
grep -E "number of (transactions actually processed|failed)" "$script.out" || true

q <<SQL
CREATE TABLE last_write AS
  SELECT DISTINCT ON (id) id, seq, at FROM writes ORDER BY id, seq DESC;
SQL
writes=$(q -c "SELECT count(*) FROM writes")
[ "$writes" -gt 100 ] || fatal "only $writes application writes: the test proves nothing"

# No lost write: every written row holds the token of its last committed write.
lost=$(q -c "SELECT count(*) FROM credential_profiles c JOIN last_write w USING (id)
              WHERE credential_decrypt(credential_reencrypt_value(c.secret, '$OLD', '$NEW'), '$NEW')
                    IS DISTINCT FROM format('{\"token\":\"w%s\"}', w.seq)")
[ "$lost" = 0 ] || fatal "$lost rows do not hold their last committed write"

# Rows still under the old key are exactly rows the application wrote after the rotation
# began waiting for its lock; everything else opens with the new key.
old_rows=$(q -c "SELECT not_readable FROM credential_verify('$NEW')")
stray=$(q -c "SELECT count(*) FROM credential_verify_rows('$NEW') r
               WHERE NOT EXISTS (SELECT 1 FROM last_write w
                                  WHERE '(id)=(' || w.id || ')' = r.primary_key
                                    AND w.at > '$rotation_started')")
[ "$stray" = 0 ] || fatal "$stray rows under the old key were not written after the rotation"
malformed=$(q -c "SELECT malformed FROM credential_verify('$NEW')")
[ "$malformed" = 0 ] || fatal "$malformed malformed rows"
echo "ok: $writes application writes, none lost; $old_rows written after the rotation under the old key"

# A re-run rotates exactly those.
rerun=$(q -c "SELECT updated FROM credential_reencrypt('$OLD', '$NEW')")
[ "$rerun" = "$old_rows" ] || fatal "re-run rotated $rerun rows, expected $old_rows"
[ "$(q -c "SELECT readable FROM credential_verify('$NEW')")" = "$ROWS" ] || fatal "not every row opens with the new key"
echo "ok: the re-run re-sealed the $rerun late writes; all $ROWS rows open with the new key"
