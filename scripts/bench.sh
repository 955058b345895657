#!/usr/bin/env bash
# Benchmark (not a test: it prints timings). Builds in release mode, starts a
# throwaway cluster, seeds Freeboard-shaped rows sealed like the application (about 1% '{}'),
# and measures in the same run, each round running all three in turn, reporting medians:
#   floor     UPDATE credential_profiles SET secret = secret || '{}'::jsonb
#   rotation  credential_reencrypt(old, new)
#   client    the runbook's client-side script (read all, re-seal in Node, one UPDATE per row),
#             on a table of CLIENT_ROWS rows of its own
# plus the peak private memory of the backend running a rotation at ROWS and at BIG_ROWS,
# and the several-old-keys comparison, on a fresh copy of one ROWS-row table before each run:
#   credential_reencrypt(text, ...) and credential_reencrypt(text[], ...) from one old key, and
#   the array form from three old keys holding a third of the rows each, in runs (as
#   successive deployments write them) and interleaved row by row (the worst case for trying
#   the key that opened the previous row first).
# Every measured run must succeed and return the counts it must return (every row scanned,
# every sealed row re-sealed, every row updated): otherwise the benchmark stops with an error
# rather than print the time of a run that did not do the work.
#   scripts/bench.sh [ROWS=100000] [ROUNDS=9] [CLIENT_ROWS=10000] [BIG_ROWS=1000000]
#   (quick check: scripts/bench.sh 2000 3 500 5000)
#   PG_MAJOR=17 scripts/bench.sh ...  runs against PostgreSQL 17 (any of 15 16 17 18; default 15)
set -euo pipefail
shopt -s inherit_errexit
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/bench-lib.sh"
cd "$REPO_ROOT"
ROWS=${1:-100000}
ROUNDS=${2:-9}
CLIENT_ROWS=${3:-10000}
BIG_ROWS=${4:-1000000}
PORT=${CREDENTIAL_ROTATE_BENCH_PORT:-54793}

ensure_deps "$PG_MAJOR"
install_extension release
[ -d examples/node_modules/pg ] ||
    (cd examples && npm ci --no-audit --no-fund --silent)
# Checkpoints are spread out so that they do not land on one side of the comparison only.
cluster_start "$PORT" "-c max_wal_size=8GB -c checkpoint_timeout=1h -c listen_addresses=127.0.0.1"
createdb bench
export PGDATABASE=bench
KEY_1=$(node scripts/freeboard.mjs keygen)
KEY_2=$(node scripts/freeboard.mjs keygen)
# What a measured run printed; removed with the cluster.
RESULT=$CLUSTER_DIR/bench-result

# One timed statement on the main table, which is then settled; its time into ELAPSED.
# $1: its name in messages, $2: the statement, $3: what it must print (psql -At, command tags
# included).
timed() {
    local t0 t1 status=0
    t0=$(now)
    psql -X -At -v ON_ERROR_STOP=1 <<<"$2" >"$RESULT" || status=$?
    t1=$(now)
    check_run "$1" "$status" "$(cat "$RESULT")" "$3"
    settle credential_profiles
    ELAPSED=$(elapsed "$t0" "$t1")
}

# The runbook's client-side script on its own table, timed, then vacuumed; its time into
# ELAPSED. It re-seals every row, '{}' included (as the runbook's script does), so every row
# must be updated.
client_run() {
    local t0 t1 status=0
    t0=$(now)
    # Over loopback TCP, as the script connects to DATABASE_URL: the most favourable network.
    DATABASE_URL="postgresql://postgres@127.0.0.1:$PGPORT/bench" \
        CREDENTIAL_ENCRYPTION_KEY_OLD=$1 CREDENTIAL_ENCRYPTION_KEY_NEW=$2 \
        TABLE=credential_profiles_client node scripts/client-reencrypt.mjs >"$RESULT" || status=$?
    t1=$(now)
    check_run "client-side script" "$status" "$(cat "$RESULT")" \
        "scanned=$CLIENT_ROWS updated=$CLIENT_ROWS"
    settle credential_profiles_client
    ELAPSED=$(elapsed "$t0" "$t1")
}

log "seeding $ROWS rows, and $CLIENT_ROWS rows for the client-side script"
create_table credential_profiles "$ROWS"
# Every round: every row scanned, every sealed row re-sealed (the keys swap between rounds),
# none already current, the '{}' rows counted as empty; the floor touches every row.
rotation_counts="$ROWS|$SEALED|0|$EMPTY"
create_table credential_profiles_client "$CLIENT_ROWS"
# Each round runs all three, so that the machine's state at any moment weighs on all of them.
floor_times=()
rot_times=()
client_times=()
old=$KEY_1
new=$KEY_2
floor_sql="UPDATE credential_profiles SET secret = secret || '{}'::jsonb"
for round in $(seq 1 "$ROUNDS"); do
    # Floor and rotation take turns going first.
    rot_sql="SELECT * FROM credential_reencrypt('$old', '$new')"
    if [ $((round % 2)) -eq 1 ]; then
        timed floor "$floor_sql" "UPDATE $ROWS"
        floor_times+=("$ELAPSED")
        timed rotation "$rot_sql" "$rotation_counts"
        rot_times+=("$ELAPSED")
    else
        timed rotation "$rot_sql" "$rotation_counts"
        rot_times+=("$ELAPSED")
        timed floor "$floor_sql" "UPDATE $ROWS"
        floor_times+=("$ELAPSED")
    fi
    client_run "$old" "$new"
    client_times+=("$ELAPSED")
    tmp=$old; old=$new; new=$tmp
    echo "round $round: floor ${floor_times[-1]} s, rotation ${rot_times[-1]} s, client ${client_times[-1]} s" >&2
done
floor=$(printf '%s\n' "${floor_times[@]}" | median)
rot=$(printf '%s\n' "${rot_times[@]}" | median)
client=$(printf '%s\n' "${client_times[@]}" | median)

# Several old keys. Sources: the same rows under KEY_1 only, a third each under KEY_1, KEY_3
# and KEY_4 in runs of consecutive ids, and the three keys interleaved row by row. Each timed
# run rotates a fresh copy (in id order) of a source into KEY_2.
log "several old keys: seeding the sources"
KEY_3=$(node scripts/freeboard.mjs keygen)
KEY_4=$(node scripts/freeboard.mjs keygen)
create_table keys_one "$ROWS"
keys_rotation_counts="$ROWS|$SEALED|0|$EMPTY"
create_table credential_profiles_keys "$ROWS"
# $1: source table, $2: SQL giving each row's group 0, 1 or 2 from its rank n (from 0).
seed_three_keys() {
    psql -X -q -v ON_ERROR_STOP=1 \
        -c "CREATE TABLE $1 AS SELECT * FROM keys_one ORDER BY id" -f - <<<"UPDATE $1 t SET secret = credential_reencrypt_value(t.secret, '$KEY_1',
                CASE r.g WHEN 1 THEN '$KEY_3' ELSE '$KEY_4' END)
              FROM (SELECT id, $2 AS g
                      FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM $1) s) r
             WHERE r.id = t.id AND r.g > 0"
}
seed_three_keys keys_runs "n * 3 / $ROWS"
seed_three_keys keys_interleaved "n % 3"
# $1: name, $2: source table, $3: the rotation statement. Restores the table untimed, then
# times the rotation into ELAPSED.
keys_run() {
    local t0 t1 status=0
    psql -X -q -v ON_ERROR_STOP=1 -c "TRUNCATE credential_profiles_keys" \
        -c "INSERT INTO credential_profiles_keys SELECT * FROM $2 ORDER BY id"
    settle credential_profiles_keys
    t0=$(now)
    # Without the array form's final NOTICE.
    PGOPTIONS='-c client_min_messages=warning' psql -X -At -v ON_ERROR_STOP=1 <<<"$3" >"$RESULT" ||
        status=$?
    t1=$(now)
    check_run "$1" "$status" "$(cat "$RESULT")" "$keys_rotation_counts"
    ELAPSED=$(elapsed "$t0" "$t1")
}
keys_sql_text="SELECT * FROM credential_reencrypt('$KEY_1', '$KEY_2', 'credential_profiles_keys')"
keys_sql_array1="SELECT * FROM credential_reencrypt(ARRAY['$KEY_1'], '$KEY_2', 'credential_profiles_keys')"
keys_sql_array3="SELECT * FROM credential_reencrypt(ARRAY['$KEY_1', '$KEY_3', '$KEY_4'], '$KEY_2', 'credential_profiles_keys')"
text_times=()
array1_times=()
runs_times=()
inter_times=()
for round in $(seq 1 "$ROUNDS"); do
    # The four take turns going first.
    for i in 0 1 2 3; do
        case $(((i + round) % 4)) in
        0) keys_run "text form, one key" keys_one "$keys_sql_text"; text_times+=("$ELAPSED") ;;
        1) keys_run "array form, one key" keys_one "$keys_sql_array1"; array1_times+=("$ELAPSED") ;;
        2) keys_run "array form, three keys in runs" keys_runs "$keys_sql_array3"; runs_times+=("$ELAPSED") ;;
        3) keys_run "array form, three keys interleaved" keys_interleaved "$keys_sql_array3"; inter_times+=("$ELAPSED") ;;
        esac
    done
    echo "round $round: text ${text_times[-1]} s, array ${array1_times[-1]} s, three keys in runs ${runs_times[-1]} s, interleaved ${inter_times[-1]} s" >&2
done
keys_text=$(printf '%s\n' "${text_times[@]}" | median)
keys_array1=$(printf '%s\n' "${array1_times[@]}" | median)
keys_runs=$(printf '%s\n' "${runs_times[@]}" | median)
keys_inter=$(printf '%s\n' "${inter_times[@]}" | median)
psql -X -q -c "DROP TABLE keys_one, keys_runs, keys_interleaved, credential_profiles_keys"

# Peak private (anonymous) memory of the backend while it rotates: sampled from /proc, so
# shared buffers the backend touches are not counted. The rotation must return its counts
# and finish, or the benchmark stops.
peak_rotation_memory() {
    local rows=$1 pid peak=0 kb line result='' finished=no
    create_table credential_profiles "$rows"
    coproc PSQL { psql -X -q -At -v ON_ERROR_STOP=1; }
    echo "SELECT pg_backend_pid();" >&"${PSQL[1]}"
    read -r pid <&"${PSQL[0]}"
    echo "SELECT * FROM credential_reencrypt('$KEY_1', '$KEY_2'); SELECT 'done';" >&"${PSQL[1]}"
    while kill -0 "$PSQL_PID" 2>/dev/null; do
        kb=$(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
        [ "${kb:-0}" -gt "$peak" ] && peak=$kb
        if read -r -t 0.05 line <&"${PSQL[0]}"; then
            [ "$line" = done ] && finished=yes && break
            result=$line
        fi
    done
    exec {PSQL[1]}>&-
    wait "$PSQL_PID" 2>/dev/null || true
    [ "$finished" = yes ] || bench_fail "the rotation at $rows rows (memory run) did not finish"
    check_run "the rotation at $rows rows (memory run)" 0 "$result" "$rows|$SEALED|0|$EMPTY"
    echo "$peak"
}
log "backend memory at $ROWS and $BIG_ROWS rows"
mem_small=$(peak_rotation_memory "$ROWS")
mem_big=$(peak_rotation_memory "$BIG_ROWS")

awk -v n="$ROWS" -v cn="$CLIENT_ROWS" -v bn="$BIG_ROWS" -v f="$floor" -v r="$rot" -v c="$client" \
    -v ms="$mem_small" -v mb="$mem_big" -v rounds="$ROUNDS" 'BEGIN {
    printf "\ncredential_rotate benchmark — %s, %d cores, medians of %d alternating runs\n", "'"$(uname -m)"'", '"$(nproc)"', rounds
    printf "%-44s %10s %12s\n", "", "seconds", "rows/s"
    printf "%-44s %10.3f %12.0f\n", "floor: UPDATE ... SET secret = secret || {} (" n ")", f, n / f
    printf "%-44s %10.3f %12.0f\n", "credential_reencrypt (" n ")", r, n / r
    printf "%-44s %10.3f %12.0f\n", "client-side script (" cn ")", c, cn / c
    printf "rotation / floor:                  %.2f x\n", r / f
    printf "client / rotation, per row:        %.1f x\n", (c / cn) / (r / n)
    printf "client / floor, per row:           %.1f x   (for reference: a rewrite with no cryptography at all)\n", (c / cn) / (f / n)
    printf "backend peak private memory:       %.1f MB at %d rows, %.1f MB at %d rows (+%.1f MB)\n", ms / 1024, n, mb / 1024, bn, (mb - ms) / 1024
}'
awk -v n="$ROWS" -v t="$keys_text" -v a="$keys_array1" -v r="$keys_runs" -v i="$keys_inter" 'BEGIN {
    printf "\nseveral old keys, %d rows, a fresh copy per run (medians, same run)\n", n
    printf "%-44s %10s %12s\n", "", "seconds", "rows/s"
    printf "%-44s %10.3f %12.0f\n", "credential_reencrypt(text, ...), one key", t, n / t
    printf "%-44s %10.3f %12.0f\n", "credential_reencrypt(text[], ...), one key", a, n / a
    printf "%-44s %10.3f %12.0f\n", "text[], three keys, a third each, in runs", r, n / r
    printf "%-44s %10.3f %12.0f\n", "text[], three keys, interleaved", i, n / i
    printf "array / text form, one key:        %.3f x   (target: at most 1.05)\n", a / t
    printf "three keys in runs / one key:      %.3f x   (target: at most 1.3)\n", r / a
    printf "three keys interleaved / one key:  %.3f x   (target: at most 1.3)\n", i / a
}'
