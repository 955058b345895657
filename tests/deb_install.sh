#!/usr/bin/env bash
# The 15 package on Debian's own PostgreSQL 15 (/usr/lib/postgresql/15), as a DBA installs it:
# `apt-get install ./<deb>`, `dpkg -L` lists exactly the expected paths, root-owned with
# 755/644 modes; CREATE EXTENSION, a rotation of Node-sealed rows that Node opens with the new
# key only, a database created at 0.1.0 updates; `apt-get remove` removes every file of the
# package and nothing of postgresql-15, and the server no longer finds the extension.
# Installs into the system it runs on: tests/deb.sh runs it directly on CI (fresh,
# single-user machines) and inside overlays of /usr, /var and /etc on a shared machine. The
# files `cargo pgrx install` put into Debian's 15 (scripts/test.sh installs its debug build
# there) belong to no package: dpkg would overwrite them and `apt-get remove` take them from
# later stages, so they wait aside and come back at the end, whatever happens.
#   tests/deb_install.sh    (the artifacts in CREDENTIAL_ROTATE_DIST, or built)
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"
PORT=${CREDENTIAL_ROTATE_PACKAGE_PORT:-54795}
load_test_keys
export KEY_A=$OLD KEY_B=$NEW
source tests/lib/artifacts.sh
PKG=postgresql-15-credential-rotate
LIB=/usr/lib/postgresql/15/lib
SHARE=/usr/share/postgresql/15/extension
SCRATCH=$(mktemp -d /tmp/credential_rotate-deb-install.XXXXXX)
SAVED=$SCRATCH/cargo-installed
ARTIFACTS_BUILT=
failures=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }
apt() {
    DEBIAN_FRONTEND=noninteractive apt-get -y -qq "$@" >"$SCRATCH/apt.log" 2>&1 ||
        { cat "$SCRATCH/apt.log" >&2; return 1; }
}
installed() { dpkg-query -W -f '${db:Status-Status}' "$PKG" 2>/dev/null | grep -qx installed; }

artifacts_for 15
DEB=$(deb_of 15)

put_back() {
    mv "$SAVED/lib/"* "$LIB/" 2>/dev/null || true
    mv "$SAVED/extension/"* "$SHARE/" 2>/dev/null || true
}
restore() {
    cluster_stop
    ! installed || apt remove "$PKG" || true
    put_back
    rm -rf "$SCRATCH"
    [ -z "$ARTIFACTS_BUILT" ] || rm -rf "$DIST"
}
trap restore EXIT

if installed; then
    echo "$PKG is installed already (an interrupted run?): removing it first"
    apt remove "$PKG"
fi
mkdir -p "$SAVED/lib" "$SAVED/extension"
for f in "$LIB/$EXT.so" "$SHARE/$EXT.control" "$SHARE/$EXT"--*.sql; do
    [ ! -e "$f" ] || case $f in
        "$LIB"/*) mv "$f" "$SAVED/lib/" ;;
        *) mv "$f" "$SAVED/extension/" ;;
    esac
done
MOVED=$(cd "$SAVED" && find . -type f -printf '%P\n' | LC_ALL=C sort)
[ -z "$MOVED" ] || echo "moved aside until the end: $(grep -c . <<<"$MOVED") files of a cargo pgrx install"

log "pg15: apt-get install ./$(basename "$DEB")"
# A path with a slash: apt-get takes it as a package file, not a package name.
apt install --no-install-recommends "$DEB" || { fail "apt-get install ./$(basename "$DEB")"; exit 1; }
installed || fail "$PKG is not installed after apt-get install"
got=$(dpkg -L "$PKG" | LC_ALL=C sort)
[ "$got" = "$(deb_paths 15)" ] || {
    fail "dpkg -L $PKG differs from the expected paths:"
    diff <(echo "$got") <(deb_paths 15) >&2 || true
}
got=$(deb_paths 15 | grep -vx '/\.' | xargs stat -c '%U:%G %a %n' | awk '$1 != "root:root" || ($2 != "755" && $2 != "644")')
[ -z "$got" ] || fail "installed paths not root-owned with 755/644 modes: $got"
echo "ok: installed; dpkg -L lists exactly the $(deb_paths 15 | grep -c .) expected paths, root-owned, 755/644"

# The installed package on Debian's server, found by its own pg_config paths.
PG_BIN=/usr/lib/postgresql/15/bin
PATH=$PG_BIN:$PATH
cluster_start "$PORT"
trap restore EXIT
q -c "CREATE DATABASE deb"
q -d deb -c "CREATE EXTENSION $EXT"
[ "$(extversion deb)" = "$VERSION" ] || fail "CREATE EXTENSION made $(extversion deb), not $VERSION"
seed deb
got=$(rotate deb "$KEY_A" "$KEY_B")
[ "$got" = "$SEEDED_ROTATION" ] || fail "rotation counted $got, not $SEEDED_ROTATION"
got=$(node_opens deb "$KEY_B")
[ "$got" = "$SEEDED_OPEN" ] || fail "with key_b, Node: $got"
got=$(node_opens deb "$KEY_A")
[ "$got" = "$SEEDED_CLOSED" ] || fail "with key_a, Node: $got"
q -c "CREATE DATABASE deb_previous"
q -d deb_previous -c "CREATE EXTENSION $EXT VERSION '0.1.0'" -c "ALTER EXTENSION $EXT UPDATE"
[ "$(extversion deb_previous)" = "$VERSION" ] || fail "0.1.0 updated to $(extversion deb_previous), not $VERSION"
echo "ok: the packaged extension rotated 303 Node-sealed rows, which Node opens with key_b only; 0.1.0 updates to $VERSION"
sudo -u postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m fast -w -t 600 stop >/dev/null

log "pg15: apt-get remove $PKG"
apt remove "$PKG" || fail "apt-get remove $PKG"
! installed || fail "$PKG is still installed after apt-get remove"
# Every file of the package and its doc directory go; postgresql-15's directories and files stay.
left=$(dpkg-deb --contents "$DEB" | awk '$1 !~ /^d/ { sub("^\\.", "", $6); print $6 }' |
    while read -r f; do [ ! -e "$f" ] || echo "$f"; done)
[ ! -e "/usr/share/doc/$PKG" ] || left="$left /usr/share/doc/$PKG"
[ -z "$left" ] || fail "left after apt-get remove: $left"
[ -x "$PG_BIN/postgres" ] && [ -f "$LIB/plpgsql.so" ] && [ -f "$SHARE/plpgsql.control" ] ||
    fail "apt-get remove took files of postgresql-15"
# The server no longer finds the extension: not for a new database, not for an existing one.
cluster_start_again
q -c "CREATE DATABASE deb_after"
got=$(q -d deb_after -c "CREATE EXTENSION $EXT" 2>&1 || true)
[[ $got == *"extension \"$EXT\" is not available"* || $got == *"could not open extension control file"* ]] ||
    fail "CREATE EXTENSION after the removal: $got"
got=$(verify deb "$KEY_B" 2>&1 || true)
[[ $got == *"could not access file \"\$libdir/$EXT\""* ]] || fail "a call after the removal: $got"
cluster_stop
echo "ok: apt-get remove removed every file of the package; the server no longer finds the extension"

put_back
back=$(for f in $MOVED; do case $f in lib/*) echo "$LIB/${f#lib/}" ;; *) echo "$SHARE/${f#extension/}" ;; esac; done |
    while read -r f; do [ -e "$f" ] || echo "$f"; done)
[ -z "$back" ] || fail "the files of the cargo pgrx install are not back: $back"

[ "$failures" -eq 0 ] || exit 1
echo "$PKG $VERSION-1: installed with apt-get on Debian's PostgreSQL 15, rotated, removed"
