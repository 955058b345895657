# Helpers shared by scripts/bench.sh and scripts/bench-cli.sh; sourced after lib.sh, with
# KEY_1 and RESULT set. Statements that hold a key reach psql on its standard input, never on
# its command line (which every local user can read in ps), and no helper ever echoes one.

bench_fail() {
    printf '\n%s: FAILED: %s\n' "$(basename "$0")" "$*" >&2
    exit 1
}

# $1: what ran, $2: its exit status, $3: what it printed, $4: what it must print,
# [$5: what to add when it failed; never psql's stderr, which can quote the statement].
check_run() {
    [ "$2" -eq 0 ] || bench_fail "$1 exited with status $2${5:+: $5}"
    [ "$3" = "$4" ] || bench_fail "$1 returned '$3', expected '$4'"
}

# $1: table name, $2: rows. Freeboard's DDL and seed, under the given name, sealed under
# KEY_1. Sets SEALED and EMPTY: how many rows hold an envelope and how many '{}'.
create_table() {
    local counts
    psql -X -q -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" \
        -c "CREATE EXTENSION IF NOT EXISTS credential_rotate" \
        -c "DROP TABLE IF EXISTS $1" \
        -c "$(sed "s/TABLE credential_profiles/TABLE $1/" tests/freeboard/credential_profiles.sql)"
    CREDENTIAL_ENCRYPTION_KEY=$KEY_1 node scripts/freeboard.mjs seed "$2" |
        sed "1s/^COPY credential_profiles /COPY $1 /" | psql -X -q -v ON_ERROR_STOP=1
    psql -X -q -c "VACUUM (ANALYZE) $1"
    counts=$(psql -X -At -v ON_ERROR_STOP=1 \
        -c "SELECT count(*), count(*) FILTER (WHERE secret = '{}'::jsonb) FROM $1")
    [ "${counts%%|*}" = "$2" ] || bench_fail "seeding $1 gave ${counts%%|*} rows, not $2"
    EMPTY=${counts#*|}
    SEALED=$(($2 - EMPTY))
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Untimed, after every timed run: vacuum the table, then write every dirty buffer out, so
# that no run starts while the previous one's writes are still being flushed.
settle() {
    psql -X -q -c "VACUUM $1" -c "CHECKPOINT"
}
