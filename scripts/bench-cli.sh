#!/usr/bin/env bash
# Benchmark of the credential-rotate program (not a test: it prints timings and ratios measured
# in the same run, and asserts none). Builds the extension and the program in release mode,
# starts a throwaway cluster listening on loopback, seeds Freeboard-shaped rows sealed by the
# application's node:crypto (about 1% '{}'), and each round runs, over loopback TCP, in turn:
#   extension   SELECT * FROM credential_reencrypt(old, new), from psql (the server alone)
#   client      credential-rotate --mode client (keys in the program; stream, decide, stage,
#               one UPDATE, verification pass, COMMIT)
#   program/ext credential-rotate --mode extension (the call above, then credential_verify)
#   seed script the runbook's client-side approach (scripts/client-reencrypt.mjs: read all,
#               re-seal in Node, one autocommit UPDATE per row), on CLIENT_ROWS rows of its own
# with the keys swapped after every run, so that each run re-seals every sealed row; medians
# of the rounds. Then the program's peak resident memory (/usr/bin/time) in client mode at
# ROWS and at BIG_ROWS rows.
#   scripts/bench-cli.sh [ROWS=100000] [ROUNDS=5] [CLIENT_ROWS=10000] [BIG_ROWS=1000000]
#   (quick check: scripts/bench-cli.sh 2000 2 500 5000)
#   PG_MAJOR=17 scripts/bench-cli.sh ...   against another supported server (default 15)
set -euo pipefail
shopt -s inherit_errexit
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/bench-lib.sh"
cd "$REPO_ROOT"
ROWS=${1:-100000}
ROUNDS=${2:-5}
CLIENT_ROWS=${3:-10000}
BIG_ROWS=${4:-1000000}
PORT=${CREDENTIAL_ROTATE_BENCH_PORT:-54793}
BIN=$REPO_ROOT/target/release/credential-rotate

ensure_deps "$PG_MAJOR"
install_extension release
log "building credential-rotate (release)"
cargo build --quiet --release -p credential-rotate-cli
[ -d examples/node_modules/pg ] ||
    (cd examples && npm ci --no-audit --no-fund --silent)
cluster_start "$PORT" "-c max_wal_size=8GB -c checkpoint_timeout=1h -c listen_addresses=127.0.0.1"
createdb bench
export PGDATABASE=bench
URL="postgresql://postgres@127.0.0.1:$PORT/bench?sslmode=disable"
KEY_1=$(node scripts/freeboard.mjs keygen)
KEY_2=$(node scripts/freeboard.mjs keygen)
RESULT=$CLUSTER_DIR/bench-result

# The program from the runbook's environment, its summary line into RESULT.
program() {
    local old=$1 new=$2
    shift 2
    env -i PATH="$PATH" DATABASE_URL="$URL" CREDENTIAL_ENCRYPTION_KEY_OLD="$old" \
        CREDENTIAL_ENCRYPTION_KEY_NEW="$new" "$BIN" --quiet "$@" >"$RESULT" 2>"$RESULT.err"
}

# $1: which (extension, client, program-ext), $2 old key, $3 new key. Timed, checked,
# settled; time into ELAPSED.
timed() {
    local t0 t1 status=0 detail='' expected="scanned=$ROWS updated=$SEALED already_current=0 empty=$EMPTY"
    t0=$(now)
    case $1 in
    extension)
        psql -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 >"$RESULT" 2>"$RESULT.err" <<<"
            SELECT format('scanned=%s updated=%s already_current=%s empty=%s', scanned, updated, already_current, empty)
              FROM credential_reencrypt('$2', '$3')" || status=$?
        ;;
    client) program "$2" "$3" --mode client || status=$? ; expected+=" mode=client" ;;
    program-ext) program "$2" "$3" --mode extension || status=$? ; expected+=" mode=extension" ;;
    esac
    t1=$(now)
    # The program's stderr never holds a key; psql's can quote the statement.
    [ "$1" = extension ] || detail=$(tail -n 3 "$RESULT.err")
    check_run "$1" "$status" "$(cat "$RESULT")" "$expected" "$detail"
    settle credential_profiles
    ELAPSED=$(elapsed "$t0" "$t1")
}

seed_script() {
    local t0 t1 status=0
    t0=$(now)
    DATABASE_URL=$URL CREDENTIAL_ENCRYPTION_KEY_OLD=$1 CREDENTIAL_ENCRYPTION_KEY_NEW=$2 \
        TABLE=credential_profiles_client node scripts/client-reencrypt.mjs >"$RESULT" 2>"$RESULT.err" ||
        status=$?
    t1=$(now)
    check_run "seed script" "$status" "$(cat "$RESULT")" "scanned=$CLIENT_ROWS updated=$CLIENT_ROWS"
    settle credential_profiles_client
    ELAPSED=$(elapsed "$t0" "$t1")
}

log "seeding $ROWS rows, and $CLIENT_ROWS rows for the seed script"
create_table credential_profiles_client "$CLIENT_ROWS"
create_table credential_profiles "$ROWS"
ext_times=()
client_times=()
prog_times=()
seed_times=()
old=$KEY_1
new=$KEY_2
swap() { local t=$old; old=$new; new=$t; }
for round in $(seq 1 "$ROUNDS"); do
    # The three over the main table take turns going first.
    for i in 0 1 2; do
        case $(((i + round) % 3)) in
        0) timed extension "$old" "$new"; ext_times+=("$ELAPSED") ;;
        1) timed client "$old" "$new"; client_times+=("$ELAPSED") ;;
        2) timed program-ext "$old" "$new"; prog_times+=("$ELAPSED") ;;
        esac
        swap
    done
    # The seed script's table is rotated back and forth on its own.
    if [ $((round % 2)) -eq 1 ]; then seed_script "$KEY_1" "$KEY_2"; else seed_script "$KEY_2" "$KEY_1"; fi
    seed_times+=("$ELAPSED")
    echo "round $round: extension ${ext_times[-1]} s, client ${client_times[-1]} s, program/extension ${prog_times[-1]} s, seed script ${seed_times[-1]} s ($CLIENT_ROWS rows)" >&2
done
ext=$(printf '%s\n' "${ext_times[@]}" | median)
client=$(printf '%s\n' "${client_times[@]}" | median)
prog=$(printf '%s\n' "${prog_times[@]}" | median)
seed=$(printf '%s\n' "${seed_times[@]}" | median)

# Peak resident memory of the program rotating $1 rows in client mode, in KB.
peak_memory() {
    local rows=$1 status=0
    create_table credential_profiles "$rows"
    env -i PATH="$PATH" DATABASE_URL="$URL" CREDENTIAL_ENCRYPTION_KEY_OLD="$KEY_1" \
        CREDENTIAL_ENCRYPTION_KEY_NEW="$KEY_2" /usr/bin/time -f '%M' -o "$RESULT.mem" \
        "$BIN" --quiet --mode client >"$RESULT" 2>"$RESULT.err" || status=$?
    check_run "client mode at $rows rows (memory run)" "$status" "$(cat "$RESULT")" \
        "scanned=$rows updated=$SEALED already_current=0 empty=$EMPTY mode=client" \
        "$(tail -n 3 "$RESULT.err")"
    tail -n 1 "$RESULT.mem"
}
log "program peak memory at $ROWS and $BIG_ROWS rows"
mem_small=$(peak_memory "$ROWS")
mem_big=$(peak_memory "$BIG_ROWS")

awk -v n="$ROWS" -v cn="$CLIENT_ROWS" -v bn="$BIG_ROWS" -v e="$ext" -v c="$client" -v p="$prog" \
    -v s="$seed" -v ms="$mem_small" -v mb="$mem_big" -v rounds="$ROUNDS" 'BEGIN {
    printf "\ncredential-rotate benchmark — %s, %d cores, PostgreSQL '"$PG_MAJOR"', over loopback TCP, medians of %d rounds\n", "'"$(uname -m)"'", '"$(nproc)"', rounds
    printf "%-52s %10s %12s\n", "", "seconds", "rows/s"
    printf "%-52s %10.3f %12.0f\n", "extension: credential_reencrypt from psql (" n ")", e, n / e
    printf "%-52s %10.3f %12.0f\n", "credential-rotate --mode client (" n ")", c, n / c
    printf "%-52s %10.3f %12.0f\n", "credential-rotate --mode extension (" n ")", p, n / p
    printf "%-52s %10.3f %12.0f\n", "seed script, one UPDATE per row (" cn ")", s, cn / s
    printf "seed script / client mode, per row:     %.1f x   (target: at least 20)\n", (s / cn) / (c / n)
    printf "client mode / extension, per row:       %.2f x   (target: at most 4)\n", c / e
    printf "program in extension mode / extension:  %.2f x   (its verification pass included)\n", p / e
    printf "program peak resident memory (client):  %.1f MB at %d rows, %.1f MB at %d rows\n", ms / 1024, n, mb / 1024, bn
}'
