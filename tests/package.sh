#!/usr/bin/env bash
# The release artifacts (scripts/package.sh) install and work on servers that never saw cargo
# or the source tree:
#   15: a copy of Debian's PostgreSQL 15 (/usr/lib/postgresql/15 and /usr/share/postgresql/15
#       under a scratch root, without the files cargo pgrx install put there), the artifact
#       untarred into that root exactly as `tar -xzf … -C /` would into /;
#   16 and up: a fresh, untouched tree of the version's wheel, the artifact untarred into it
#       with its Debian paths mapped to the tree's (pg_config --pkglibdir and --sharedir).
# Then, on each: CREATE EXTENSION, a rotation of Node-sealed rows from key_a to key_b, and
# Node opens every rotated row with key_b to its original plaintext (and none with key_a);
# a database created at the previous release from the artifact's scripts updates to this one.
#   tests/package.sh [NN ...]    (default: 15 16; the artifacts in CREDENTIAL_ROTATE_DIST, as
#                                 scripts/test.sh passes them, or built with scripts/package.sh)
# Runs its own clusters (port CREDENTIAL_ROTATE_PACKAGE_PORT, default 54795); never touches
# the system installation.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"
read -ra versions <<<"${*:-15 16}"
PORT=${CREDENTIAL_ROTATE_PACKAGE_PORT:-54795}
load_test_keys
export KEY_A=$OLD KEY_B=$NEW
source tests/lib/artifacts.sh
PREVIOUS=0.1.0
SCRATCH=$(mktemp -d /tmp/credential_rotate-package.XXXXXX)
chmod 755 "$SCRATCH"
ARTIFACTS_BUILT=
cleanup() {
    cluster_stop
    rm -rf "$SCRATCH"
    [ -z "$ARTIFACTS_BUILT" ] || rm -rf "$DIST"
}
trap cleanup EXIT
failures=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }

artifacts_for "${versions[@]}"

# A server root for major $1 that never saw cargo; prints its bin directory.
fresh_server() {
    local major=$1 root=$SCRATCH/pg$1 artifact tree
    artifact=$(tarball_of "$major")
    mkdir -p "$root"
    if [ "$major" = 15 ]; then
        # Debian's postgres finds its lib and share directories relative to its own binary,
        # so the copy under $root serves them from $root/usr/...: the Debian layout itself.
        mkdir -p "$root/usr/lib/postgresql" "$root/usr/share/postgresql"
        cp -a /usr/lib/postgresql/15 "$root/usr/lib/postgresql/"
        cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
        rm -f "$root/usr/lib/postgresql/15/lib/$EXT.so" "$root/usr/share/postgresql/15/extension/$EXT"[.-]*
        tar -xzf "$artifact" -C "$root" || return 1
        echo "$root/usr/lib/postgresql/15/bin"
    else
        tree=$(fresh_wheel_tree "$major" "$root") || return 1
        install_into_tree "$tree" "$major" "$artifact" || return 1
        echo "$tree/bin"
    fi
}

# The installed files must be the artifact's, and nothing of a cargo build may be around.
check_installed() {
    local major=$1 bin=$2 lib share
    lib=$("$bin/pg_config" --pkglibdir)
    share=$("$bin/pg_config" --sharedir)
    case $lib in "$SCRATCH"/*) ;; *) fail "pg$major: the server's libdir $lib is not the scratch copy" ;; esac
    [ -f "$lib/$EXT.so" ] || fail "pg$major: no $EXT.so in $lib"
    [ -f "$share/extension/$EXT--$VERSION.sql" ] || fail "pg$major: no $EXT--$VERSION.sql"
    [ -f "$share/extension/$EXT--$PREVIOUS.sql" ] || fail "pg$major: no $EXT--$PREVIOUS.sql"
}

for major in "${versions[@]}"; do
    log "pg$major: the artifact on a server without cargo"
    bin=$(fresh_server "$major")
    check_installed "$major" "$bin"
    PG_BIN=$bin
    PATH=$bin:$PATH
    cluster_start "$PORT"
    trap cleanup EXIT
    server=$(q -c "SHOW server_version_num")
    [ "${server:0:2}" = "$major" ] || fail "pg$major: the server is $server"

    q -c "CREATE DATABASE package"
    q -d package -c "CREATE EXTENSION $EXT"
    seed package
    got=$(rotate package "$KEY_A" "$KEY_B")
    [ "$got" = "$SEEDED_ROTATION" ] || fail "pg$major: rotation counted $got, not $SEEDED_ROTATION"
    got=$(node_opens package "$KEY_B")
    [ "$got" = "$SEEDED_OPEN" ] || fail "pg$major: with key_b, Node: $got"
    got=$(node_opens package "$KEY_A")
    [ "$got" = "$SEEDED_CLOSED" ] || fail "pg$major: with key_a, Node: $got"
    echo "pg$major: 303 Node-sealed rows rotated by the artifact's library open in Node with key_b only"

    # The previous release's install script ships too: a database at $PREVIOUS updates.
    q -c "CREATE DATABASE package_previous"
    q -d package_previous -c "CREATE EXTENSION $EXT VERSION '$PREVIOUS'" -c "ALTER EXTENSION $EXT UPDATE"
    got=$(q -d package_previous -c "SELECT extversion FROM pg_extension WHERE extname = '$EXT'")
    [ "$got" = "$VERSION" ] || fail "pg$major: $PREVIOUS updated to $got, not $VERSION"
    cluster_stop
done

[ "$failures" -eq 0 ] || exit 1
echo "artifacts for ${versions[*]}: installed without cargo, rotated Node-sealed rows, updated from $PREVIOUS"
