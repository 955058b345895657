#!/usr/bin/env bash
# Server-log hygiene: a failing statement that carries a key never puts it into the server log,
# whatever fails (a wrong key, a cancel, statement_timeout, an error before the extension's code
# runs) and however the key got there (literal, PL/pgSQL wrapper, EXECUTE, prepared statement,
# any accepted spelling); and an ordinary failing query on credential_profiles keeps its
# STATEMENT and CONTEXT lines. Every hidden case also checks that its error was logged, so a
# log that lost everything fails.
#
# Self-contained: makes its own database (with session_preload_libraries set on it) and role,
# and drops them at the end. The key-leak check reads the whole log, so it also covers the
# stages that ran before this one.
# $1: the cluster's log file (the postmaster's stderr). Connection settings: PG* variables.
set -euo pipefail
log_file=$1
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
source "$here/../scripts/lib.sh"
DB=credential_rotate_log_hygiene
ROLE=credential_rotate_log_hygiene_caller
# Enough rows that a rotation runs for over two seconds (about 120,000 rows/s, debug or
# release), so a cancel or statement_timeout lands in the middle of it.
ROWS=${HYGIENE_ROWS:-300000}
failures=0
checks=0

load_test_keys # OLD (key_a, the rows' key) and NEW (key_b)
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

psql -X -q -At -v ON_ERROR_STOP=1 -d postgres >/dev/null <<SQL
SET client_min_messages = warning;
DROP DATABASE IF EXISTS $DB;
DROP ROLE IF EXISTS $ROLE;
CREATE ROLE $ROLE LOGIN;
CREATE DATABASE $DB;
-- New sessions load the library (and its log hook) before their first statement.
ALTER DATABASE $DB SET session_preload_libraries = 'credential_rotate';
SQL
q >/dev/null <<SQL
CREATE EXTENSION credential_rotate;
\\ir $here/freeboard/credential_profiles.sql
INSERT INTO credential_profiles (id, name, type, secret)
  SELECT 'cp-' || lpad(i::text, 7, '0'), 'profile ' || i, 'bearer', e.secret
    FROM generate_series(1, $ROWS) i,
         (SELECT credential_encrypt('{"token":"t"}', '$OLD') AS secret) e;
GRANT SELECT ON credential_profiles TO $ROLE;
-- Wrappers named without any of the extension's names: their callers' text holds the keys,
-- and only the per-statement marking can hide it.
CREATE FUNCTION rotate_wrapper(o text, n text) RETURNS bigint LANGUAGE plpgsql AS \$\$
DECLARE r bigint;
BEGIN
    SELECT updated INTO r FROM credential_reencrypt(o, n);
    RETURN r;
END
\$\$;
-- The CONTEXT line of an error here shows the EXECUTEd text, keys included.
CREATE FUNCTION rotate_dynamic(o text, n text) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
    EXECUTE format('SELECT * FROM credential_reencrypt(%L, %L)', o, n);
END
\$\$;
CREATE FUNCTION decrypt_wrapper(e jsonb, k text) RETURNS text LANGUAGE plpgsql AS \$\$
BEGIN
    RETURN credential_decrypt(e, k);
END
\$\$;
SQL
[ "$(q -c "SHOW session_preload_libraries")" = credential_rotate ] ||
    { echo "session_preload_libraries is not in effect in $DB" >&2; exit 1; }

# A third key, whose standard encoding has both '+' and '/', so that its URL-safe spelling
# differs from it.
WRONG=$(q -c "SELECT k FROM (SELECT credential_generate_key() AS k FROM generate_series(1, 500)) g
              WHERE strpos(k, '+') > 0 AND strpos(k, '/') > 0 LIMIT 1")
[ -n "$WRONG" ] || { echo "no generated key had both '+' and '/'" >&2; exit 1; }
url_safe() { printf '%s' "$1" | tr '+/' '-_'; }
WRONG_URL=$(url_safe "${WRONG%=}") # URL-safe alphabet, unpadded
OLD_BARE=${OLD%=}                  # unpadded

# Everything that must never reach the log: each key's base64 core in both alphabets, and
# each half of it (a truncated or wrapped statement would still leak a half).
secrets=()
for key in "$OLD" "$NEW" "$WRONG"; do
    for core in "${key%=}" "$(url_safe "${key%=}")"; do
        secrets+=("$key" "$core" "${core:0:22}" "${core:21}")
    done
done
secrets+=("$WRONG_URL" "$OLD_BARE")
redact() {
    local line secret
    while IFS= read -r line; do
        for secret in "${secrets[@]}"; do line=${line//"$secret"/<key>}; done
        printf '%s\n' "$line"
    done
}

fail() {
    echo "FAILED: $CASE: $1" >&2
    slice | redact | sed 's/^/    log: /' >&2
    failures=$((failures + 1))
}
begin_case() {
    CASE=$1
    checks=$((checks + 1))
    OFFSET=$(stat -c %s "$log_file")
}
slice() { tail -c +$((OFFSET + 1)) "$log_file"; }
# The server writes a report before it sends it to the client; the wait only matters for a
# log written by a logging collector.
logged() {
    for _ in $(seq 20); do
        slice | grep -qF -- "$1" && return 0
        sleep 0.1
    done
    return 1
}
# The case's error ($1) is in the log, with neither its statement text nor a context line.
expect_hidden() {
    if ! logged "$1"; then
        fail "the error ('$1') was not logged: the check would prove nothing"
    elif slice | grep -qE '(STATEMENT|CONTEXT):  '; then
        fail "the statement's text or context was logged"
    else
        echo "ok: $CASE: error logged, statement hidden"
    fi
}
# The case's error ($1) is in the log with its STATEMENT line ($2), and a CONTEXT line ($3).
expect_shown() {
    if ! logged "$1"; then
        fail "the error ('$1') was not logged"
    elif ! slice | grep -qF -- "STATEMENT:  $2"; then
        fail "the STATEMENT line is missing"
    elif [ -n "${3:-}" ] && ! slice | grep -qF -- "CONTEXT:  $3"; then
        fail "the CONTEXT line is missing"
    else
        echo "ok: $CASE: error logged with its statement"
    fi
}
# Runs the SQL on stdin, one statement at a time (psql splits it), expecting the last to fail.
# The client's messages can hold keys too (the CONTEXT of an EXECUTE): they are not shown.
run_failing() {
    if psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@" >/dev/null 2>&1; then
        echo "FAILED: $CASE: the statement did not fail" >&2
        failures=$((failures + 1))
    fi
}

# Starts a rotation ($1) in the background and waits until its backend is running it; sets
# ROT_PID (psql) and BACKEND.
start_rotation() {
    psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "$1" >/dev/null 2>&1 &
    ROT_PID=$!
    BACKEND=""
    for _ in $(seq 200); do
        # pg_stat_activity shows the call with its keys masked.
        BACKEND=$(q -c "SELECT pid FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()
              AND state = 'active' AND query LIKE '%credential_reencrypt(''*%'" || true)
        [ -n "$BACKEND" ] && return 0
        sleep 0.05
    done
    echo "FAILED: $CASE: the rotation did not start" >&2
    exit 1
}
still_running() {
    kill -0 "$ROT_PID" 2>/dev/null ||
        { echo "FAILED: $CASE: the rotation ended before the fault: raise HYGIENE_ROWS" >&2; exit 1; }
}

# --- Positive controls: ordinary failing statements keep their text in the log. ---

# In a session that has called the extension (the marking must not outlive its statement).
begin_case "an ordinary failing query on credential_profiles, after a key-taking call"
run_failing <<SQL
SELECT credential_key_fingerprint('$OLD');
SELECT * FROM credential_profiles WHERE id = (1/0)::text;
SQL
expect_shown "division by zero" "SELECT * FROM credential_profiles WHERE id = (1/0)::text"

begin_case "an ordinary failing PL/pgSQL block on credential_profiles"
run_failing <<'SQL'
DO $$ BEGIN PERFORM * FROM credential_profiles WHERE name = 'x' || (1/0)::text; END $$;
SQL
expect_shown "division by zero" 'DO $$ BEGIN PERFORM' 'SQL statement "SELECT * FROM credential_profiles WHERE name'

# --- Failing statements that carry keys. ---

begin_case "a failing rotation (wrong old key)"
run_failing <<SQL
SELECT * FROM credential_reencrypt('$WRONG', '$NEW');
SQL
expect_hidden "does not open with old_key or new_key"

begin_case "a failing rotation, keys URL-safe and unpadded, and with surrounding spaces"
run_failing <<SQL
SELECT * FROM credential_reencrypt('$WRONG_URL', '  $NEW  ');
SQL
expect_hidden "does not open with old_key or new_key"

begin_case "a failing decrypt, key unpadded with surrounding whitespace"
run_failing <<SQL
SELECT credential_decrypt(jsonb_set(secret, '{authTag}', '"AAAAAAAAAAAAAAAAAAAAAA=="'), E' $OLD_BARE\\n')
  FROM credential_profiles LIMIT 1;
SQL
expect_hidden "does not open with the key"

begin_case "a key inside an invalid key argument"
run_failing <<SQL
SELECT credential_key_fingerprint('not-a-key-$NEW');
SQL
expect_hidden "key is not a valid key"

begin_case "a failing rotation through a PL/pgSQL wrapper (no extension name in the text)"
run_failing <<SQL
SELECT rotate_wrapper('$WRONG', '$NEW');
SQL
expect_hidden "does not open with old_key or new_key"

begin_case "a failing rotation EXECUTEd by a PL/pgSQL wrapper (keys in the CONTEXT line)"
run_failing <<SQL
SELECT rotate_dynamic('$WRONG_URL', '$NEW');
SQL
expect_hidden "does not open with old_key or new_key"

# The envelope is refused before the key is even parsed: the statement must be marked first.
begin_case "a malformed envelope through a PL/pgSQL wrapper"
run_failing <<SQL
SELECT decrypt_wrapper('{"algorithm":"aes-128-cbc"}', '$NEW');
SQL
expect_hidden 'the envelope algorithm is not "aes-256-gcm"'

# psql sends the two statements separately: the failing one's text is only the EXECUTE.
begin_case "a failing rotation through a prepared statement (EXECUTE with the keys)"
run_failing <<SQL
PREPARE rot(text, text) AS SELECT * FROM credential_reencrypt(\$1, \$2);
EXECUTE rot('$WRONG', '  $NEW');
SQL
expect_hidden "does not open with old_key or new_key"

begin_case "pg_cancel_backend during a rotation"
start_rotation "SELECT * FROM credential_reencrypt('$OLD', '$NEW')"
sleep 0.3
still_running
q -c "SELECT pg_cancel_backend($BACKEND)" >/dev/null
wait "$ROT_PID" || true
expect_hidden "canceling statement due to user request"

# The timeout error itself shows the rotation was cut short.
begin_case "statement_timeout during a rotation"
run_failing <<SQL
SET statement_timeout = '500ms';
SELECT * FROM credential_reencrypt('$OLD_BARE', ' $NEW');
SQL
expect_hidden "canceling statement due to statement timeout"

begin_case "statement_timeout during a rotation through a PL/pgSQL wrapper"
run_failing <<SQL
SET statement_timeout = '500ms';
SELECT rotate_wrapper('$OLD', '$(url_safe "$NEW")');
SQL
expect_hidden "canceling statement due to statement timeout"

# --- Errors before the extension's code runs: only session_preload_libraries covers them. ---
# Each is the first statement of its session, so nothing but the preload loaded the library.

begin_case "a misspelt argument name, as a session's first statement"
run_failing <<SQL
SELECT * FROM credential_reencrypt(old_key => '$WRONG', nw_key => '$NEW');
SQL
expect_hidden "function credential_reencrypt(old_key => unknown, nw_key => unknown) does not exist"

begin_case "permission denied for the function, as a session's first statement"
run_failing -U "$ROLE" <<SQL
SELECT * FROM credential_reencrypt('$WRONG_URL', '$NEW');
SQL
expect_hidden "permission denied for function credential_reencrypt"

# Control: without the preload the same mistake is logged in full (so the preload is what
# hid it above). A placeholder stands in for the keys.
begin_case "a misspelt argument name without session_preload_libraries (control)"
PGOPTIONS="-c session_preload_libraries=" run_failing <<SQL
SELECT * FROM credential_reencrypt(old_key => 'placeholder-1', nw_key => 'placeholder-2');
SQL
expect_shown "does not exist" "SELECT * FROM credential_reencrypt(old_key => 'placeholder-1'"

# --- No key anywhere in the log, in any spelling. ---
begin_case "no key in the whole server log"
if grep -qF -f <(printf '%s\n' "${secrets[@]}") "$log_file"; then
    grep -nF -f <(printf '%s\n' "${secrets[@]}") "$log_file" | redact >&2
    echo "FAILED: a key reached the server log (lines above, keys replaced by <key>)" >&2
    failures=$((failures + 1))
else
    echo "ok: no key in the server log (${#secrets[@]} spellings and fragments searched)"
fi

psql -X -q -d postgres -c "DROP DATABASE $DB" -c "DROP ROLE $ROLE" >/dev/null
echo "log hygiene: $((checks - failures)) of $checks checks passed"
[ "$failures" -eq 0 ]
