#!/usr/bin/env bash
# Runs every test of credential_rotate on a fresh Debian 12 machine (installing what is
# missing). On every supported PostgreSQL version: the Rust unit tests and #[pg_test]s, the
# pg_regress suite, the isolation tests, the Node.js interop tests, the server-log hygiene
# check, the key exposure check (logs, pg_stat_statements, pg_stat_activity) and the
# credential-rotate program. Once: formatting and lints, fuzzing, on PostgreSQL 15 the faults,
# live writes, hot standby and upgrade tests (docs/development.md says why), and the release
# artifacts of every version: built once, then the PGXN metadata, the tarballs, the Debian
# packages and a pg_upgrade from 16 to 17 with them.
#   PG_VERSIONS="15 17" scripts/test.sh     narrows the run (default: all of 15 16 17 18);
#                                           the PostgreSQL 15 once-only stages run when 15 is in
set -uo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
read -ra VERSIONS <<<"${PG_VERSIONS:-$PG_SUPPORTED}"

PORT=${CREDENTIAL_ROTATE_TEST_PORT:-54791}
passed=0
failed=0
failures=()

stage() {
    local name=$1
    shift
    log "$name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$name")
        printf 'FAILED: %s\n' "$name" >&2
    fi
}

# The whole workspace (the extension, crates/core, crates/cli) and the fuzz targets, which are
# a workspace of their own.
lint() {
    cargo fmt --all --check &&
        (cd fuzz && cargo fmt --check) &&
        cargo clippy --quiet --workspace --all-targets \
            --features "credential_rotate/pg15 credential_rotate/pg_test" -- -D warnings
}

# The plain-Rust crates' unit tests: cargo pgrx test runs the extension package's only.
unit_tests() {
    cargo test --quiet -p credential-rotate-core -p credential-rotate-cli
}

# The credential-rotate program (debug build), for its integration stages.
CLI_BIN=$REPO_ROOT/target/debug/credential-rotate
build_cli() {
    cargo build --quiet -p credential-rotate-cli
}

# The program against databases without the extension (client mode) and with it (the same
# counts in both modes), its faults (kill -9, lost connections, COMMIT in flight, lock
# timeout), then TLS and SCRAM on a cluster of its own.
cli_tests() {
    [ -x "$CLI_BIN" ] || { echo "no $CLI_BIN: the build stage failed" >&2; return 1; }
    CREDENTIAL_ROTATE_BIN=$CLI_BIN node --test tests/cli/*.test.mjs &&
        CREDENTIAL_ROTATE_BIN=$CLI_BIN bash tests/cli_tls.sh
}

# cargo pgrx test pgNN builds with --no-default-features --features "pgNN pg_test" itself.
pgrx_tests() {
    local pgdata=/tmp/credential_rotate-pgrx-test-$PORT-$PG_MAJOR
    rm -rf "$pgdata"
    cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$pgdata"
}

# pg_regress or pg_isolation_regress ($1) over every test in $2/$3 (sql or specs); further
# arguments go to the runner (a later --dbname wins).
run_regress() {
    local runner=$1 dir=$2 kind=$3 ext=$4 out
    shift 4
    out=$(mktemp -d)
    "$runner" --bindir="$PG_BIN" --inputdir="$dir" --outputdir="$out" \
        --dbname="credential_rotate_$kind" "$@" \
        $(cd "$dir/$kind" && ls *."$ext" | sed "s/\.$ext\$//") ||
        { cat "$out/regression.diffs" >&2 2>/dev/null; return 1; }
}

# The DBA sessions in a UTF8, a LATIN1 and an SQL_ASCII database (the cluster is initdb'd
# with the C locale, so any encoding can be chosen per database).
regress() {
    local enc status=0
    for enc in UTF8 LATIN1 SQL_ASCII; do
        echo "pg_regress in a $enc database:"
        run_regress "$PG_LIBDIR/pgxs/src/test/regress/pg_regress" tests/pg_regress sql sql \
            --encoding="$enc" --dbname="credential_rotate_sql_${enc,,}" || status=1
    done
    return "$status"
}

isolation() {
    run_regress "$PG_LIBDIR/pgxs/src/test/isolation/pg_isolation_regress" tests/isolation specs spec
}

node_interop() {
    # The migration example's one dependency (node-postgres), for its test.
    [ -d examples/node_modules/pg ] ||
        (cd examples && npm ci --no-audit --no-fund --silent) &&
        node --test tests/node/*.test.mjs
}

# A failed call carries both keys in its text; the server log must not receive it.
log_hygiene() {
    bash tests/log_hygiene.sh "$CLUSTER_LOG"
}

# Every setting that records statement text, on a cluster of its own (port PORT + 3) with
# pg_stat_statements, auto_explain and (on 15) pgaudit preloaded.
log_exposure() {
    bash tests/log_exposure.sh
}

# The pure core under libFuzzer, FUZZ_SECONDS (default 30) per target: the envelope parser,
# opener and key parser (envelope), the jsonb layout reader and splice (container), and the
# re-seal of a stored envelope from the old key to the new one (rotate). Longer
# on demand: FUZZ_SECONDS=3600 scripts/test.sh, or cargo fuzz run <target> -s none directly.
fuzz() {
    local target scratch status=0
    for target in envelope container rotate; do
        # New inputs go to a scratch corpus (the first directory); the committed seeds stay.
        scratch=$(mktemp -d)
        echo "fuzz target $target:"
        cargo fuzz run "$target" --sanitizer none "$scratch" "fuzz/corpus/$target" -- \
            -max_total_time="${FUZZ_SECONDS:-30}" -timeout=5 -print_final_stats=1 2>&1 |
            grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)|Done|SUMMARY|panicked|ERROR"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
        rm -rf "$scratch"
    done
    return "$status"
}

# Builds and installs the extension for PG_MAJOR and starts a test cluster of that version;
# a failed build counts as a failed stage.
start_test_cluster() {
    if install_extension debug; then
        cluster_start "$PORT"
    else
        stage "pg$PG_MAJOR: build and install the extension" false
        return 1
    fi
}

ensure_deps "${VERSIONS[@]}" || exit 1

stage "cargo fmt and clippy" lint
stage "unit tests of the plain-Rust crates (crates/core, crates/cli)" unit_tests
stage "build the credential-rotate program" build_cli

# On every version in PG_VERSIONS. Stage names start with "pgNN:".
for version in "${VERSIONS[@]}"; do
    use_pg "$version" || exit 1
    PG_LIBDIR=$("$PG_CONFIG" --pkglibdir)
    stage "pg$version: Rust unit tests and #[pg_test]s (cargo pgrx test)" pgrx_tests
    start_test_cluster || continue
    stage "pg$version: pg_regress suite" regress
    stage "pg$version: isolation tests" isolation
    stage "pg$version: the grant block of docs/security.md, then docs/runbook.md and the migration script as that role" \
        bash tests/doc_grants.sh
    stage "pg$version: Node.js interop tests" node_interop
    stage "pg$version: server log hygiene" log_hygiene
    stage "pg$version: credential-rotate: client and extension modes, faults, TLS and SCRAM" cli_tests
    stage "pg$version: no key in logs, pg_stat_statements, pg_stat_activity, crash or deadlock lines" log_exposure
    cluster_stop
done

# Once, on PostgreSQL 15 (Debian 12's own): skipped when PG_VERSIONS leaves 15 out.
if [[ " ${VERSIONS[*]} " == *" 15 "* ]]; then
    use_pg 15
    if start_test_cluster; then
        stage "faults mid-rotation: kill -9, immediate stop, statement_timeout, cancel" bash tests/faults.sh
        stage "live application writes during a rotation (pgbench)" bash tests/live_writes.sh
        stage "batched rotation interrupted by cancel and kill -9, old-key writes behind the batch front" bash tests/batched_interrupt.sh
        stage "lost client connection mid-rotation (autocommit, BEGIN, client_connection_check_interval)" bash tests/lost_connection.sh
        stage "hot standby reader during a rotation" bash tests/hot_standby.sh
        stage "upgrade from the previous releases (ALTER EXTENSION UPDATE)" bash tests/upgrade.sh
        stage "credential-rotate: live application writes during a client-mode rotation (pgbench)" \
            env CREDENTIAL_ROTATE_BIN="$CLI_BIN" node --test tests/cli/heavy/*.test.mjs
        cluster_stop
    fi
fi

# Once, whatever the server version: the release artifacts of every supported version, built
# once (release builds, a few minutes each) into a directory of this run, which the stages
# after it take from CREDENTIAL_ROTATE_DIST.
CREDENTIAL_ROTATE_DIST=$(mktemp -d /tmp/credential_rotate-dist.XXXXXX)
export CREDENTIAL_ROTATE_DIST
trap 'rm -rf "$CREDENTIAL_ROTATE_DIST"' EXIT
# shellcheck disable=SC2086 # the list of versions
stage "release artifacts: tarballs and Debian packages for $PG_SUPPORTED (scripts/package.sh)" \
    bash scripts/package.sh $PG_SUPPORTED
stage "PGXN META.json valid; one version in Cargo.toml, META.json, CHANGELOG.md and every artifact" \
    bash tests/meta.sh
stage "release tarballs install and rotate without cargo (15: Debian's, 16: a fresh wheel tree)" \
    bash tests/package.sh 15 16
stage "Debian packages: fields, files and lintian for 15-18; apt-get install, rotate and remove on Debian's 15" \
    bash tests/deb.sh
stage "pg_upgrade 16 -> 17 with the extension: --check refuses without its files, then upgrades; audit rows, verify, rotation back" \
    bash tests/pg_upgrade.sh 16 17
stage "fuzzing the envelope parser, opener, key parser, jsonb layout reader and splice, and re-sealing" fuzz

if [ "$failed" -gt 0 ]; then
    printf '\nfailed stages: %s\n' "${failures[*]}"
fi
printf '\nstages: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
