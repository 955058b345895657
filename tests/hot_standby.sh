#!/usr/bin/env bash
# A streaming replica on loopback while the primary rotates: a reader on the standby never
# sees rows under both keys at once, and after replay every row opens with the new key.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
ROWS=${STANDBY_ROWS:-20000}
DB=credential_rotate_standby
STANDBY_PORT=$((PGPORT + 1))
source "$REPO_ROOT/tests/lib/cluster.sh"
load_test_keys
standby() { psql -X -q -At -v ON_ERROR_STOP=1 -p "$STANDBY_PORT" -d "$DB" "$@"; }

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
q <<SQL
CREATE EXTENSION credential_rotate;
CREATE TABLE credential_profiles (id TEXT PRIMARY KEY, secret JSONB NOT NULL DEFAULT '{}'::jsonb);
INSERT INTO credential_profiles
  SELECT 'cp-' || i, credential_encrypt(format('{"token":"s%s"}', i), '$OLD') FROM generate_series(1, $ROWS) i;
SQL

standby_dir=$CLUSTER_DIR/standby
sudo -u postgres "$PG_BIN/pg_basebackup" -h "$PGHOST" -p "$PGPORT" -U postgres -D "$standby_dir" -R -X stream -c fast
sudo -u postgres "$PG_BIN/pg_ctl" -D "$standby_dir" -l "$CLUSTER_DIR/standby.log" -w \
    -o "-p $STANDBY_PORT -k $CLUSTER_DIR/sock -c listen_addresses='' -c hot_standby=on" start >/dev/null
trap 'sudo -u postgres "$PG_BIN/pg_ctl" -D "$standby_dir" -m fast -w -t 600 stop >/dev/null 2>&1 || true' EXIT
[ "$(standby -c "SELECT pg_is_in_recovery()")" = t ] || fatal "the standby is not in recovery"

# One snapshot per observation: both counts in one REPEATABLE READ transaction.
observe() {
    standby <<SQL
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT o.readable || ' ' || n.readable FROM credential_verify('$OLD') o, credential_verify('$NEW') n;
COMMIT;
SQL
}
observations=$CLUSTER_DIR/standby.observations
: >"$observations"
( while [ ! -e "$CLUSTER_DIR/rotation.done" ]; do observe >>"$observations"; done ) &
reader=$!
sleep 0.5
q -c "SELECT format('primary: scanned=%s updated=%s', scanned, updated) FROM credential_reencrypt('$OLD', '$NEW')"
# Let the reader see the replayed state for a moment too.
target=$(q -c "SELECT pg_current_wal_lsn()")
for _ in $(seq 120); do
    [ "$(standby -c "SELECT pg_last_wal_replay_lsn() >= '$target'")" = t ] && break
    sleep 0.25
done
sleep 0.5
touch "$CLUSTER_DIR/rotation.done"
wait "$reader"
# And once more now that replay has certainly passed the rotation's commit.
observe >>"$observations"

total=$(wc -l <"$observations")
mixed=$(awk -v n="$ROWS" '!(($1 == n && $2 == 0) || ($1 == 0 && $2 == n))' "$observations" | wc -l)
before=$(awk -v n="$ROWS" '$1 == n && $2 == 0' "$observations" | wc -l)
after=$(awk -v n="$ROWS" '$1 == 0 && $2 == n' "$observations" | wc -l)
[ "$mixed" = 0 ] || { sort "$observations" | uniq -c >&2; fatal "the standby showed rows under both keys at once"; }
[ "$before" -gt 0 ] && [ "$after" -gt 0 ] || fatal "the reader saw only one side ($before before, $after after): proves nothing"
[ "$(standby -c "SELECT readable FROM credential_verify('$NEW')")" = "$ROWS" ] || fatal "not every row opens with the new key on the standby"
echo "ok: $total standby snapshots, $before all under the old key, $after all under the new key, none mixed"
