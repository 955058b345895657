# Shared helpers for scripts/demo.sh, scripts/test.sh and scripts/bench.sh. Sourced, not run.
# shellcheck shell=bash

PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BIN/pg_config
PGRX_VERSION=0.18.1
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '\n==> %s\n' "$*" >&2; }

# Installs what a fresh Debian 12 machine lacks, skipping what is already there.
ensure_deps() {
    local missing=()
    for pkg in postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Debian starts a 'main' cluster on 5432 when it installs the server; we never use it.
    if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
        log "installing cargo-pgrx $PGRX_VERSION (about 6 minutes)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        log "installing cargo-fuzz"
        cargo install cargo-fuzz --locked
    fi
    if ! grep -qs "^pg$PG_MAJOR = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        log "cargo pgrx init --pg$PG_MAJOR"
        cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG"
    fi
}

# Builds and installs the extension into the system PostgreSQL ($1: "release" or "debug").
install_extension() {
    local profile=${1:-debug}
    local flags=()
    [ "$profile" = release ] && flags+=(--release)
    log "building and installing credential_rotate ($profile)"
    (cd "$REPO_ROOT" && cargo pgrx install --pg-config "$PG_CONFIG" "${flags[@]}" >/dev/null)
    # cargo pgrx installs the current version's script and the upgrade scripts; the install
    # scripts of previous releases (sql/credential_rotate--<version>.sql) are copied here, so
    # that a previous version can still be created (tests/upgrade.sh does).
    local script
    for script in "$REPO_ROOT"/sql/credential_rotate--*.sql; do
        case $(basename "$script") in
        credential_rotate--*--*) ;;
        *) install -m 644 "$script" "$("$PG_CONFIG" --sharedir)/extension/" ;;
        esac
    done
}

# Starts a throwaway cluster owned by the postgres user. Sets CLUSTER_DIR, PGHOST, PGPORT,
# PGUSER, PGDATABASE, CLUSTER_LOG. $1: port. Extra args: "-c name=value" server settings.
cluster_start() {
    local port=$1
    shift
    CLUSTER_DIR=$(mktemp -d /tmp/credential_rotate.XXXXXX)
    chmod 755 "$CLUSTER_DIR"
    mkdir -p "$CLUSTER_DIR/sock"
    chown -R postgres:postgres "$CLUSTER_DIR"
    CLUSTER_LOG=$CLUSTER_DIR/server.log
    CLUSTER_OPTS="-p $port -k $CLUSTER_DIR/sock -c listen_addresses='' $*"
    export CLUSTER_DIR CLUSTER_LOG CLUSTER_OPTS
    sudo -u postgres "$PG_BIN/initdb" -D "$CLUSTER_DIR/data" -A trust -U postgres >/dev/null
    cluster_start_again
    export PGHOST=$CLUSTER_DIR/sock PGPORT=$port PGUSER=postgres PGDATABASE=postgres
    trap cluster_stop EXIT
}

# Starts the cluster made by cluster_start again, with the same settings (after a stop).
cluster_start_again() {
    sudo -u postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_LOG" -w \
        -o "$CLUSTER_OPTS" start >/dev/null
}

cluster_stop() {
    if [ -n "${CLUSTER_DIR:-}" ] && [ -d "$CLUSTER_DIR/data" ]; then
        sudo -u postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$CLUSTER_DIR"
    fi
}

# The two keys of the shared Node-sealed test vectors, into OLD and NEW.
load_test_keys() {
    local vectors=$REPO_ROOT/tests/vectors/envelopes.json
    OLD=$(node -e "console.log(require('$vectors').key_a)")
    NEW=$(node -e "console.log(require('$vectors').key_b)")
}
