#!/usr/bin/env bash
# Keys never outlive the parse: a rotation that passes its keys as literals (or as bound
# parameters) leaves no key in the server log, pg_stat_statements, pg_stat_activity, the
# postmaster's crash line, another backend's deadlock report, or what code running inside the
# call reads with current_query(), under every setting that records statement text:
# log_min_duration_statement, log_statement, auto_explain (nested statements), pgaudit
# (PostgreSQL 15, Debian's postgresql-15-pgaudit) and pg_stat_statements. Each case first
# proves that its setting really recorded a statement (an ordinary statement's literal, or a
# parameter the masking must leave visible), then that the rotation's own line is there,
# masked. Also: the README's psql session, run as written, and the warning of a session that
# did not preload the library.
#
# Runs its own cluster (port PGPORT + 3, beside the suite's), since the libraries under test
# must be in shared_preload_libraries. The library is preloaded the documented way:
# ALTER SYSTEM SET session_preload_libraries. Connection settings: PG* variables (PGPORT is the
# suite's cluster's port).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
source "$here/../scripts/lib.sh"
DB=credential_rotate_exposure
MONITOR=credential_rotate_exposure_monitor
APP=credential_rotate_exposure_app
# Rows of the large table: enough that a rotation runs for over two seconds (about 120,000
# rows/s), so that it can be watched and killed while it runs.
ROWS=${EXPOSURE_ROWS:-300000}
failures=0
checks=0
failed_cases=0

load_test_keys # OLD (key_a) and NEW (key_b)
# The key credential_profiles is under now, and the other one: every rotation swaps them.
# The other tables keep their own: BIG (big_profiles), SIDE (other_profiles), TRUSTED
# (trusted_profiles).
CUR=$OLD
OTHER=$NEW
swap() { local t=$CUR; CUR=$OTHER; OTHER=$t; }
other_of() { if [ "$1" = "$OLD" ]; then printf '%s' "$NEW"; else printf '%s' "$OLD"; fi; }
BIG=$OLD
SIDE=$OLD
TRUSTED=$OLD
stars() { printf '%*s' "$1" '' | tr ' ' '*'; }
K=$(stars ${#OLD}) # a masked key literal's body (both keys are 44 characters)
MASKED_CALL="credential_reencrypt('$K', '$K')"

libdir=$("$PG_CONFIG" --pkglibdir)
preload=pg_stat_statements,auto_explain
pgaudit=false
if [ -f "$libdir/pgaudit.so" ]; then
    preload+=,pgaudit
    pgaudit=true
fi
work=$(mktemp -d)
chmod 755 "$work"
cluster_start $((PGPORT + 3)) -c shared_preload_libraries=$preload -c deadlock_timeout=60s
trap 'cluster_stop; rm -rf "$work"' EXIT
log_file=$CLUSTER_LOG

q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

psql -X -q -At -v ON_ERROR_STOP=1 -d postgres >/dev/null <<SQL
CREATE DATABASE $DB;
CREATE ROLE $MONITOR LOGIN IN ROLE pg_read_all_stats;
CREATE ROLE $APP NOLOGIN;
-- The install step of docs/install.md: new sessions load the library before their first
-- statement.
ALTER SYSTEM SET session_preload_libraries = 'credential_rotate';
SELECT pg_reload_conf();
SQL
q >/dev/null <<SQL
CREATE EXTENSION credential_rotate;
CREATE EXTENSION pg_stat_statements;
\\ir $here/freeboard/credential_profiles.sql
CREATE TABLE seed AS SELECT credential_encrypt('{"token":"t"}', '$CUR') AS secret;
INSERT INTO credential_profiles (id, name, type, secret)
  SELECT 'cp-' || lpad(i::text, 7, '0'), 'profile ' || i, 'bearer', s.secret
    FROM generate_series(1, 1000) i, seed s;
CREATE TABLE big_profiles (LIKE credential_profiles INCLUDING ALL);
INSERT INTO big_profiles (id, name, type, secret)
  SELECT 'cp-' || lpad(i::text, 7, '0'), 'profile ' || i, 'bearer', s.secret
    FROM generate_series(1, $ROWS) i, seed s;
CREATE TABLE other_profiles (LIKE credential_profiles INCLUDING ALL);
INSERT INTO other_profiles SELECT * FROM credential_profiles LIMIT 10;
DROP TABLE seed;
-- A wrapper whose name is none of the extension's: only the keys the call receives tell
-- which parts of its caller's text to mask.
CREATE FUNCTION rotate_wrapper(o text, n text) RETURNS bigint LANGUAGE plpgsql AS \$\$
DECLARE r bigint;
BEGIN
    SELECT updated INTO r FROM credential_reencrypt(o, n);
    RETURN r;
END
\$\$;
CREATE PROCEDURE control_procedure(t text) LANGUAGE sql AS \$\$ SELECT t \$\$;
-- Code of the application's role on one of its tables, recording every statement it runs in.
CREATE TABLE captured (q text);
GRANT INSERT ON captured TO PUBLIC;
CREATE TABLE trusted_profiles (LIKE credential_profiles INCLUDING ALL);
INSERT INTO trusted_profiles SELECT * FROM credential_profiles LIMIT 5;
ALTER TABLE trusted_profiles OWNER TO $APP;
CREATE FUNCTION record_statement() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN INSERT INTO public.captured VALUES (pg_catalog.current_query()); RETURN NEW; END \$\$;
ALTER FUNCTION record_statement() OWNER TO $APP;
CREATE TRIGGER record BEFORE UPDATE ON trusted_profiles FOR EACH ROW EXECUTE FUNCTION record_statement();
SQL
[ "$(q -c "SHOW session_preload_libraries")" = credential_rotate ] ||
    { echo "session_preload_libraries is not in effect" >&2; exit 1; }

# Every spelling of both keys that must never be recorded: as given, unpadded, in the URL-safe
# alphabet, and each half (a truncated or wrapped text would still leak a half).
secrets=()
url_safe() { printf '%s' "$1" | tr '+/' '-_'; }
for key in "$OLD" "$NEW"; do
    for core in "${key%=}" "$(url_safe "${key%=}")"; do
        secrets+=("$key" "$core" "${core:0:22}" "${core:21}")
    done
done
redact() {
    local line secret
    while IFS= read -r line; do
        for secret in "${secrets[@]}"; do line=${line//"$secret"/<key>}; done
        printf '%s\n' "$line"
    done
}
holds_key() { grep -qF -f <(printf '%s\n' "${secrets[@]}") "$@"; }

fail() {
    echo "FAILED: $CASE: $1" >&2
    slice | redact | tail -n 40 | sed 's/^/    log: /' >&2
    failures=$((failures + 1))
}
begin_case() {
    CASE=$1
    checks=$((checks + 1))
    OFFSET=$(stat -c %s "$log_file")
    case_failures=$failures
}
slice() { tail -c +$((OFFSET + 1)) "$log_file"; }
# The log holds $1 (a fixed string) since the case began.
logged() {
    for _ in $(seq 50); do
        slice | grep -qF -- "$1" && return 0
        sleep 0.1
    done
    return 1
}
expect_logged() {
    logged "$1" || fail "not in the log: $2"
}
# The case's part of the log holds no key; prints the case's verdict.
end_case() {
    if slice | holds_key; then
        fail "a key reached the server log"
    fi
    if [ "$failures" -eq "$case_failures" ]; then
        echo "ok: $CASE"
    else
        failed_cases=$((failed_cases + 1))
    fi
}
# The control statement of a case: an ordinary statement whose literal must be recorded.
control() { q -c "SELECT 'control-$1' AS control" >/dev/null; }

# --- Each setting that records statement text, on alone. ---

begin_case "log_min_duration_statement = 0"
PGOPTIONS="-c log_min_duration_statement=0" q -c "SELECT 'control-duration'" \
    -c "SELECT * FROM credential_reencrypt('$CUR', '$OTHER')" >/dev/null
swap
expect_logged "statement: SELECT 'control-duration'" "the control statement"
expect_logged "ms  statement: SELECT * FROM $MASKED_CALL" "the rotation's duration line, masked"
end_case

begin_case "log_statement = 'all', library preloaded, the rotation as a session's first statement"
PGOPTIONS="-c log_statement=all" q -c "SELECT * FROM credential_reencrypt('$CUR', '$OTHER')" >/dev/null
swap
PGOPTIONS="-c log_statement=all" control statement
expect_logged "statement: SELECT 'control-statement'" "the control statement"
expect_logged "statement: SELECT * FROM $MASKED_CALL" "the rotation's statement line, masked"
end_case

begin_case "auto_explain with log_nested_statements"
explain="-c auto_explain.log_min_duration=0 -c auto_explain.log_nested_statements=on"
PGOPTIONS=$explain q -c "SELECT * FROM credential_reencrypt('$CUR', '$OTHER')" >/dev/null
swap
PGOPTIONS=$explain control explain
expect_logged "Query Text: SELECT 'control-explain'" "the control statement's plan"
expect_logged "Query Text: UPDATE public.credential_profiles" "the rotation's nested UPDATE"
expect_logged "Query Text: SELECT * FROM $MASKED_CALL" "the rotation's plan, masked"
end_case

if $pgaudit; then
    begin_case "pgaudit, pgaudit.log = 'all', log_parameter = on"
    audit="-c pgaudit.log=all -c pgaudit.log_parameter=on"
    PGOPTIONS=$audit q -c "SELECT * FROM credential_reencrypt('$CUR', '$OTHER')" >/dev/null
    swap
    PGOPTIONS=$audit q -c "CALL credential_reencrypt_batched('$CUR', '$OTHER', batch_rows => 400)" \
        >/dev/null 2>&1
    swap
    PGOPTIONS=$audit control audit
    expect_logged "AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 'control-audit' AS control,<none>" \
        "the control statement"
    expect_logged "FUNCTION,public.credential_reencrypt,\"SELECT * FROM $MASKED_CALL\",<none>" \
        "the rotation's audit row, masked"
    expect_logged "FUNCTION,public.credential_reencrypt_batched,\"CALL credential_reencrypt_batched('$K', '$K', batch_rows => 400)\"" \
        "the batched rotation's audit row, masked"
    # Inside the procedure, its variables are the parameters of its statements.
    expect_logged "\"SELECT credential_rotate._credential_check_keys(old_key, new_key)\",\"$K,$K," \
        "the procedure's key check, parameters masked"
    end_case
else
    echo "skipped: pgaudit (no pgaudit.so for PostgreSQL $PG_MAJOR)"
fi

begin_case "pg_stat_statements (a SELECT and a CALL)"
q -c "SELECT pg_stat_statements_reset()" >/dev/null
stats="-c pg_stat_statements.track=all"
PGOPTIONS=$stats q -c "SELECT * FROM credential_reencrypt('$CUR', '$OTHER')" >/dev/null
swap
PGOPTIONS=$stats q -c "CALL credential_reencrypt_batched('$CUR', '$OTHER', batch_rows => 400)" >/dev/null 2>&1
swap
PGOPTIONS=$stats q -c "CALL control_procedure('control-statistics')"
q -c "SELECT query FROM pg_stat_statements" >"$work/statistics"
# PostgreSQL 15 keeps a CALL's text as typed (16 and later replace constants by $n).
if ! grep -qF "CALL control_procedure('control-statistics')" "$work/statistics" &&
    ! grep -qF 'CALL control_procedure($1)' "$work/statistics"; then
    fail "the control CALL is not in pg_stat_statements"
fi
grep -qF "credential_reencrypt(" "$work/statistics" ||
    fail "the rotation is not in pg_stat_statements"
# 15 keeps the CALL as typed, 16 and later replace only some of its constants by $n.
grep -qF "CALL credential_reencrypt_batched('$K', '$K', batch_rows => " "$work/statistics" ||
    grep -qF 'CALL credential_reencrypt_batched($1, $2, batch_rows => $3)' "$work/statistics" ||
    fail "the batched rotation's CALL is not in pg_stat_statements, masked: $(grep -F batched "$work/statistics" | redact)"
if holds_key "$work/statistics"; then
    fail "a key is in pg_stat_statements"
fi
end_case

begin_case "bound parameters from the Node client (node-postgres)"
[ -d "$REPO_ROOT/examples/node_modules/pg" ] ||
    (cd "$REPO_ROOT/examples" && npm install --no-package-lock --no-audit --no-fund --silent)
logging="-c log_statement=all -c log_min_duration_statement=0 $explain"
$pgaudit && logging+=" $audit"
url="postgresql://$PGUSER@localhost/$DB?host=$PGHOST&port=$PGPORT"
# The migration script binds the keys as $1, $2 and the table as $3.
out=$(PGOPTIONS=$logging DATABASE_URL=$url CREDENTIAL_ENCRYPTION_KEY_OLD=$CUR \
    CREDENTIAL_ENCRYPTION_KEY_NEW=$OTHER node "$REPO_ROOT/examples/rotate-credentials.mjs" 2>&1) ||
    fail "the migration script failed: $(printf '%s' "$out" | redact)"
swap
expect_logged "execute <unnamed>: SELECT scanned, updated, already_current, empty FROM credential_reencrypt(\$1, \$2, \$3)" \
    "the rotation's execute line"
# "parameters:" until 16, "Parameters:" from 17.
expect_logged "arameters: \$1 = '$K', \$2 = '$K', \$3 = 'credential_profiles'" \
    "its parameters, keys masked, the table visible (the control)"
if $pgaudit; then
    expect_logged "credential_reencrypt(\$1, \$2, \$3)\",\"$K,$K,credential_profiles\"" \
        "the audit row's parameters, keys masked, the table visible"
fi
if [ "$PG_MAJOR" -ge 16 ]; then
    expect_logged "Query Parameters: \$1 = '$K', \$2 = '$K', \$3 = '" "auto_explain's parameters"
fi
end_case

begin_case "a PL/pgSQL wrapper of another name"
PGOPTIONS="-c log_min_duration_statement=0 $explain" \
    q -c "SELECT rotate_wrapper('$CUR', '$OTHER')" >/dev/null
swap
expect_logged "statement: SELECT rotate_wrapper('$K', '$K')" \
    "the wrapper call's duration line, masked by the keys the call received"
expect_logged "Query Text: SELECT rotate_wrapper('$K', '$K')" "its plan, masked"
expect_logged "Query Text: SELECT updated" "the nested rotation's plan"
end_case

# --- The text other backends and processes read from shared memory. ---

# Starts a rotation of big_profiles in the background; sets ROT_PID (psql) and BACKEND once it
# runs.
start_big_rotation() {
    psql -X -q -d "$DB" -c "SELECT * FROM credential_reencrypt('$BIG', '$(other_of "$BIG")', 'big_profiles')" \
        >/dev/null 2>&1 &
    ROT_PID=$!
    BACKEND=""
    for _ in $(seq 200); do
        BACKEND=$(q -c "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
            AND pid <> pg_backend_pid() AND state = 'active'
            AND query LIKE '%big_profiles%'" || true)
        [ -n "$BACKEND" ] && return 0
        sleep 0.05
    done
    echo "FAILED: $CASE: the rotation did not start" >&2
    exit 1
}

begin_case "a member of pg_read_all_stats sampling pg_stat_activity during a large rotation"
start_big_rotation
# The instant between the statement's arrival and its parse is not covered (docs/security.md):
# sampling starts once the call runs.
sleep 0.5
: >"$work/samples"
while kill -0 "$ROT_PID" 2>/dev/null; do
    psql -X -q -At -U "$MONITOR" -d "$DB" \
        -c "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database()" \
        >>"$work/samples" 2>&1 || true
    sleep 0.1
done
wait "$ROT_PID" || fail "the rotation failed"
BIG=$(other_of "$BIG")
grep -qF "$BACKEND|SELECT * FROM credential_reencrypt('$K', '$K', 'big_profiles')" "$work/samples" ||
    fail "no sample showed the running rotation (masked)"
if holds_key "$work/samples"; then
    fail "a sample of pg_stat_activity held a key"
fi
end_case

begin_case "kill -9 of a backend mid-rotation (the postmaster's crash line)"
start_big_rotation
sleep 0.5
kill -0 "$ROT_PID" 2>/dev/null || { fail "the rotation ended before the kill: raise EXPOSURE_ROWS"; }
kill -9 "$BACKEND"
wait "$ROT_PID" || true
expect_logged "terminated by signal 9" "the crash"
expect_logged "Failed process was running: SELECT * FROM credential_reencrypt('$K', '$K', 'big_profiles')" \
    "the crash line, masked"
for _ in $(seq 300); do pg_isready -q -h "$PGHOST" -p "$PGPORT" && break; sleep 0.1; done
q -c "SELECT 1" >/dev/null
end_case

begin_case "an application transaction that deadlocks with a rotation (the victim's DETAIL)"
# The application (without the library: session_preload_libraries emptied) updates a row of
# credential_profiles, waits until the rotation waits for that row's table, then updates
# other_profiles, which the rotation has already rotated in the same transaction: a deadlock,
# found by the application (the shorter deadlock_timeout), which reports what the rotation's
# backend runs.
PGOPTIONS="-c session_preload_libraries= -c deadlock_timeout=200ms" \
    psql -X -q -d "$DB" >"$work/app.out" 2>&1 <<'SQL' &
BEGIN;
UPDATE credential_profiles SET name = name WHERE id = 'cp-0000001';
DO $$ BEGIN
    WHILE NOT EXISTS (SELECT FROM pg_stat_activity
                       WHERE wait_event_type = 'Lock' AND query LIKE '%credential' || '_reencrypt(%') LOOP
        PERFORM pg_stat_clear_snapshot();
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
UPDATE other_profiles SET name = name;
ROLLBACK;
SQL
APP_PID=$!
sleep 0.5
q -c "BEGIN" -c "SELECT * FROM credential_reencrypt('$SIDE', '$(other_of "$SIDE")', 'other_profiles')" \
    -c "SELECT * FROM credential_reencrypt('$CUR', '$OTHER')" -c "COMMIT" >/dev/null
swap
SIDE=$(other_of "$SIDE")
wait "$APP_PID" || true
grep -q "deadlock detected" "$work/app.out" || fail "the application was not the deadlock's victim"
expect_logged "deadlock detected" "the deadlock"
expect_logged ": SELECT * FROM $MASKED_CALL" "the rotation's text in the victim's DETAIL, masked"
end_case

# --- What code running inside the call reads. ---

begin_case "a trigger recording current_query() during a trusted rotation"
q -c "BEGIN" -c "SET LOCAL credential_rotate.trust_table_code = on" \
    -c "SELECT * FROM credential_reencrypt('$TRUSTED', '$(other_of "$TRUSTED")', 'trusted_profiles')" \
    -c "COMMIT" >/dev/null
TRUSTED=$(other_of "$TRUSTED")
q -c "SELECT q FROM captured" >"$work/captured"
[ "$(grep -cF "SELECT * FROM credential_reencrypt('$K', '$K', 'trusted_profiles')" "$work/captured")" = 5 ] ||
    fail "the trigger did not record the masked rotation once per row: $(redact <"$work/captured")"
if holds_key "$work/captured"; then
    fail "current_query() returned a key"
fi
end_case

# --- Without the preload, and the documented psql session. ---

begin_case "a session that did not preload the library is warned, once"
PGOPTIONS="-c session_preload_libraries= -c log_statement=all" psql -X -q -At -d "$DB" \
    -c "SELECT credential_key_fingerprint(credential_generate_key())" \
    -c "SELECT credential_key_fingerprint(credential_generate_key())" >"$work/warned" 2>&1
[ "$(grep -c "WARNING:  the server log may hold this statement's keys: log_statement = 'all' logged it before credential_rotate was loaded" "$work/warned")" = 1 ] ||
    fail "no single warning: $(cat "$work/warned")"
grep -qF "ALTER SYSTEM SET session_preload_libraries = 'credential_rotate'; SELECT pg_reload_conf();" "$work/warned" ||
    fail "the warning does not give the command"
PGOPTIONS="-c session_preload_libraries= -c log_statement=all" psql -X -q -d postgres \
    -c "CREATE DATABASE ${DB}_fresh" >/dev/null
PGOPTIONS="-c session_preload_libraries= -c log_statement=all" psql -X -q -d "${DB}_fresh" \
    -c "CREATE EXTENSION credential_rotate" >"$work/created" 2>&1
grep -qF "WARNING:  credential_rotate is not preloaded: with log_statement = 'all'" "$work/created" ||
    fail "CREATE EXTENSION did not warn: $(cat "$work/created")"
psql -X -q -d postgres -c "DROP DATABASE ${DB}_fresh" >/dev/null
end_case

begin_case "the README's psql session, with every setting on"
printf '%s\n' "$CUR" >"$work/credential_key_old"
printf '%s\n' "$OTHER" >"$work/credential_key_new"
# The session as README.md shows it, reading the key files from here.
awk '/^## A psql session/ {in_section = 1} in_section && /^```sql/ {on = 1; next}
     on && /^```/ {exit} on {print}' "$REPO_ROOT/README.md" |
    sed "s|/run/secrets/|$work/|g" >"$work/session.sql"
grep -q credential_reencrypt "$work/session.sql" || fail "no psql session found in README.md"
all="-c log_statement=all -c log_min_duration_statement=0 $explain"
$pgaudit && all+=" $audit"
PGOPTIONS=$all psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -f "$work/session.sql" >"$work/session.out" 2>&1 ||
    fail "the session failed: $(redact <"$work/session.out")"
swap
q -c "SELECT readable FROM credential_verify('$CUR')" | grep -qx 1000 ||
    fail "the session did not rotate the table"
expect_logged "statement: SELECT * FROM credential_reencrypt(" "the session's rotation"
if holds_key "$work/session.out"; then
    fail "the session printed a key"
fi
end_case

begin_case "no key in the whole server log or pg_stat_statements"
q -c "SELECT query FROM pg_stat_statements" >"$work/statistics"
OFFSET=0
if holds_key "$log_file" "$work/statistics"; then
    grep -nF -f <(printf '%s\n' "${secrets[@]}") "$log_file" "$work/statistics" | redact | head -n 20 >&2
    echo "FAILED: a key was recorded (lines above, keys replaced by <key>)" >&2
    failures=$((failures + 1))
    failed_cases=$((failed_cases + 1))
else
    echo "ok: no key in the server log or pg_stat_statements (${#secrets[@]} spellings and halves searched)"
fi

echo "log exposure: $((checks - failed_cases)) of $checks checks passed"
[ "$failures" -eq 0 ]
