# Helpers the cluster-level test scripts share (faults, batched interruption, lost connections,
# live writes, hot standby, log hygiene): one database of their own on the test cluster of
# scripts/test.sh, Freeboard's table in it, rows sealed like the application's, checks and
# reports. Sourced after scripts/lib.sh, with DB set. Reports: ok, failed (counted in
# $failures), fatal (ends the script).
# shellcheck shell=bash

failures=0

q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
ok() { echo "ok: $*"; }
failed() {
    echo "FAILED: $*" >&2
    failures=$((failures + 1))
}
fatal() {
    echo "FAILED: $*" >&2
    exit 1
}

# $DB anew, with the extension and Freeboard's credential_profiles table.
fresh_database() {
    psql -X -q -d postgres -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
    q -c "CREATE EXTENSION credential_rotate" -f "$REPO_ROOT/tests/freeboard/credential_profiles.sql"
}

# $1 rows into credential_profiles, sealed under $OLD as the application seals them, one in a
# hundred holding the '{}' default; then VACUUM ANALYZE and a CHECKPOINT. Sets SEALED.
seed_profiles() {
    q <<SQL
INSERT INTO credential_profiles (id, name, type, secret)
  SELECT 'cp-' || lpad(i::text, 7, '0'), 'profile ' || i, 'bearer',
         CASE WHEN i % 100 = 0 THEN '{}'::jsonb
              ELSE credential_encrypt(format('{"token":"%s"}', md5(i::text)), '$OLD') END
    FROM generate_series(1, $1) i;
VACUUM ANALYZE credential_profiles;
CHECKPOINT;
SQL
    SEALED=$(q -c "SELECT count(*) FROM credential_profiles WHERE secret <> '{}'")
}

# Every secret as stored: what "nothing changed" compares.
fingerprint() { q -c "SELECT md5(string_agg(id || '=' || secret::text, ',' ORDER BY id)) FROM credential_profiles"; }
audit_mark() { q -c "SELECT coalesce(max(id), 0) FROM credential_rotate_audit"; }

# kill -9 of backend $1, then waits until the postmaster has restarted every backend (until it
# has, a new connection can still succeed and then be terminated by the restart) and the
# server answers again.
kill_backend() {
    local restarts
    restarts=$(grep -c "all server processes terminated; reinitializing" "$CLUSTER_LOG" || true)
    kill -9 "$1"
    for _ in $(seq 100); do
        [ "$(grep -c "all server processes terminated; reinitializing" "$CLUSTER_LOG" || true)" -gt "$restarts" ] && break
        sleep 0.1
    done
    wait_ready
}

# Until the server accepts connections again (after a crash or a restart).
wait_ready() {
    for _ in $(seq 120); do
        "$PG_BIN/pg_isready" -q && psql -X -At -d "$DB" -c "SELECT 1" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    fatal "the server did not come back"
}
