#!/usr/bin/env bash
# Faults in the middle of a rotation of 200,000 rows: kill -9 of the backend, an immediate
# shutdown, statement_timeout, pg_cancel_backend. After each, every row's secret is
# byte-identical to before and opens with the old key.
# Needs the test cluster of scripts/test.sh (PG* variables, CLUSTER_DIR, PG_BIN, and
# cluster_start_again from scripts/lib.sh).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
ROWS=${FAULT_ROWS:-200000}
DB=credential_rotate_faults
source "$REPO_ROOT/tests/lib/cluster.sh"
load_test_keys

check() {
    local name=$1 got
    got=$(fingerprint)
    local readable
    readable=$(q -c "SELECT readable FROM credential_verify('$OLD')")
    if [ "$got" = "$BEFORE" ] && [ "$readable" = "$SEALED" ]; then
        ok "$name: every secret byte-identical and opening with the old key"
    else
        failed "$name: secrets changed ($got vs $BEFORE, $readable of $SEALED open)"
    fi
}

# Starts a rotation in the background; waits until its backend has been busy for a while
# (a full rotation of $ROWS rows takes several seconds). Sets ROT_PID (psql) and BACKEND.
start_rotation() {
    psql -X -q -d "$DB" -v ON_ERROR_STOP=1 ${1:+-c "$1"} \
        -c "SELECT * FROM credential_reencrypt('$OLD', '$NEW')" >"$CLUSTER_DIR/rotation.out" 2>&1 &
    ROT_PID=$!
    BACKEND=""
    for _ in $(seq 100); do
        BACKEND=$(psql -X -At -d "$DB" -c "SELECT pid FROM pg_stat_activity
            WHERE query LIKE 'SELECT * FROM credential_reencrypt%' AND state = 'active'" || true)
        [ -n "$BACKEND" ] && break
        sleep 0.05
    done
    [ -n "$BACKEND" ] || { echo "rotation did not start" >&2; exit 1; }
    sleep "${2:-1}"
    # Still running: we really are in the middle of it.
    kill -0 "$ROT_PID" 2>/dev/null || { echo "rotation finished before the fault: use more rows" >&2; cat "$CLUSTER_DIR/rotation.out" >&2; exit 1; }
}


fresh_database
seed_profiles "$ROWS"
BEFORE=$(fingerprint)
echo "seeded $ROWS rows ($SEALED sealed)"

# 1. kill -9 of the backend: the postmaster restarts every backend and replays the WAL.
start_rotation
kill_backend "$BACKEND"
wait "$ROT_PID" 2>/dev/null || true
grep -q "server closed the connection\|connection to server was lost\|terminated" "$CLUSTER_DIR/rotation.out" ||
    failed "the killed rotation did not see its connection die"
check "kill -9 of the rotating backend"

# 2. Immediate shutdown (no checkpoint, crash recovery at start).
start_rotation
sudo -u postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m immediate -w stop >/dev/null
wait "$ROT_PID" 2>/dev/null || true
cluster_start_again
wait_ready
check "pg_ctl stop -m immediate"

# 3. statement_timeout.
start_rotation "SET statement_timeout = '1500ms'" 0.2
wait "$ROT_PID" 2>/dev/null || true
grep -q "canceling statement due to statement timeout" "$CLUSTER_DIR/rotation.out" ||
    { echo "FAILED: no statement timeout error: $(cat "$CLUSTER_DIR/rotation.out")" >&2; failures=$((failures + 1)); }
check "statement_timeout"

# 4. pg_cancel_backend.
start_rotation
psql -X -q -At -d "$DB" -c "SELECT pg_cancel_backend($BACKEND)" >/dev/null
wait "$ROT_PID" 2>/dev/null || true
grep -q "canceling statement due to user request" "$CLUSTER_DIR/rotation.out" ||
    { echo "FAILED: no cancel error: $(cat "$CLUSTER_DIR/rotation.out")" >&2; failures=$((failures + 1)); }
check "pg_cancel_backend"

# 5. A cancel arriving while a progress NOTICE is sent: errfinish() services it from inside
# the NOTICE. With a NOTICE on every row, a statement_timeout or pg_cancel_backend at any
# moment lands there. Then, in the same session: no state of the cancelled call is left (the
# helpers refuse, the audit append finds nothing) and the next calls work.
notice_cancel() {
    local name=$1 timeout=$2 cancel_after=$3 out=$CLUSTER_DIR/notice_cancel.out
    psql -X -q -At -d "$DB" >"$out" 2>&1 <<SQL &
SET credential_rotate.progress_rows = 1;
SET statement_timeout = '$timeout';
SELECT * FROM credential_reencrypt('$OLD', '$NEW');
RESET statement_timeout;
SET credential_rotate.progress_rows = 0;
SELECT 'after: ' || credential_rotate._credential_reencrypt_take('(0,1)');
SELECT 'after: ' || credential_rotate._credential_audit_append();
SELECT 'verify: ' || readable FROM credential_verify('$OLD');
SELECT 'dry run: ' || updated FROM credential_reencrypt('$OLD', '$NEW', dry_run => true);
SQL
    local pid=$!
    if [ "$cancel_after" != 0 ]; then
        sleep "$cancel_after"
        psql -X -q -At -d "$DB" -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
            WHERE query LIKE 'SELECT * FROM credential_reencrypt(%' AND state = 'active'" >/dev/null
    fi
    wait "$pid" || true
    local errors
    errors=$(grep -E "^(psql:)?.*ERROR" "$out" | grep -v "NOTICE" | sed -e "s|$OLD|<old>|g" -e "s|$NEW|<new>|g" || true)
    if grep -q "canceling statement" "$out" &&
        [ "$(grep -c "is only called by credential_reencrypt, while it runs" "$out")" = 2 ] &&
        grep -qx "verify: $SEALED" "$out" && grep -qx "dry run: $SEALED" "$out" &&
        ! grep -qi "borrow\|panic\|nested" "$out"; then
        ok "$name: cancelled during progress NOTICEs; the session's next calls start clean"
    else
        failed "$name: $errors"
    fi
    check "$name"
}
notice_cancel "statement_timeout 250 ms during progress NOTICEs" 250ms 0
notice_cancel "statement_timeout 500 ms during progress NOTICEs" 500ms 0
notice_cancel "statement_timeout 900 ms during progress NOTICEs" 900ms 0
notice_cancel "pg_cancel_backend after 0.4 s during progress NOTICEs" 0 0.4
notice_cancel "pg_cancel_backend after 1.2 s during progress NOTICEs" 0 1.2

# And the rotation itself still completes afterwards.
q -c "SELECT format('after the faults: scanned=%s updated=%s', scanned, updated) FROM credential_reencrypt('$OLD', '$NEW')"
[ "$(q -c "SELECT readable FROM credential_verify('$NEW')")" = "$SEALED" ] ||
    failed "the final rotation did not rotate every row"
[ "$failures" -eq 0 ]
