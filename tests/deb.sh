#!/usr/bin/env bash
# The Debian packages (scripts/package.sh, packaging/debian/build.sh):
#   every major (15 16 17 18): the control fields, exactly the expected files with root
#       ownership and 755/644 modes, md5sums that match, the changelogs and the copyright file,
#       and lintian reporting no error and no warning that docs/install.md does not justify;
#   15 (Debian 12's own server): `apt-get install ./<deb>`, `dpkg -L` lists exactly the
#       expected files, CREATE EXTENSION and a rotation of Node-sealed rows that Node opens with
#       the new key, then `apt-get remove` removes every file and the server no longer finds
#       the extension (tests/deb_install.sh).
#   tests/deb.sh [NN ...]    (default: 15 16 17 18; the artifacts in CREDENTIAL_ROTATE_DIST, as
#                             scripts/test.sh passes them, or built with scripts/package.sh)
# The install and removal are tests/deb_install.sh's, which works on the system's own 15: run
# directly on CI (fresh, single-user machines), and where CREDENTIAL_ROTATE_PG15_ROOT is set
# (developers sharing a machine) inside a private mount namespace whose /usr, /var and /etc
# are overlays of the real ones, so that the system is never written to.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"
read -ra versions <<<"${*:-$PG_SUPPORTED}"
source tests/lib/artifacts.sh
SCRATCH=$(mktemp -d /tmp/credential_rotate-deb.XXXXXX)
ARTIFACTS_BUILT=
overlay=
trap 'rm -rf "$SCRATCH" ${overlay:+"$overlay"}; [ -z "$ARTIFACTS_BUILT" ] || rm -rf "$DIST"' EXIT
failures=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }

artifacts_for "${versions[@]}"

# The lintian tags docs/install.md justifies: the first column of its lintian table.
justified_tags() {
    sed -n '/^### lintian/,/^##[^#]/p' docs/install.md | sed -n 's/^| `\([a-z0-9-]*\)` |.*/\1/p'
}

check_package() {
    local major=$1 deb pkg=postgresql-$1-credential-rotate field want got tmp tag before=$failures
    deb=$(deb_of "$major")
    tmp=$SCRATCH/check$major
    mkdir -p "$tmp"
    # Control fields.
    while IFS='|' read -r field want; do
        got=$(dpkg-deb --field "$deb" "$field")
        [ "$got" = "$want" ] || fail "pg$major: $field is '$got', not '$want'"
    done <<EOF
Package|$pkg
Version|$VERSION-1
Architecture|amd64
Section|database
Priority|optional
Maintainer|$(python3 -c 'import json; print(json.load(open("META.json"))["maintainer"])')
EOF
    got=$(dpkg-deb --field "$deb" Depends)
    [[ $got =~ ^postgresql-$major,\ libc6\ \(\>=\ 2\.[0-9]+\) ]] ||
        fail "pg$major: Depends is '$got', not postgresql-$major and libc6"
    got=$(dpkg-deb --field "$deb" Description)
    [[ ${got%%$'\n'*} == *" PostgreSQL $major" ]] ||
        fail "pg$major: the Description's synopsis does not name PostgreSQL $major: ${got%%$'\n'*}"

    # Exactly the expected paths, owned by root, directories 755 and files 644.
    dpkg-deb --contents "$deb" >"$tmp/contents"
    got=$(awk '{ p = $6; sub("^\\.", "", p); sub("/$", "", p); print (p == "" ? "/." : p) }' "$tmp/contents" |
        LC_ALL=C sort)
    [ "$got" = "$(deb_paths "$major")" ] || {
        fail "pg$major: the package's files differ from the expected ones:"
        diff <(echo "$got") <(deb_paths "$major") >&2 || true
    }
    got=$(awk '$2 != "root/root" || ($1 != "drwxr-xr-x" && $1 != "-rw-r--r--")' "$tmp/contents")
    [ -z "$got" ] || fail "pg$major: entries not root-owned with 755/644 modes: $got"

    # md5sums covers every file and matches; Installed-Size is what dpkg-gencontrol counts.
    dpkg-deb -x "$deb" "$tmp/root"
    dpkg-deb -e "$deb" "$tmp/DEBIAN"
    (cd "$tmp/root" && md5sum --quiet -c "$tmp/DEBIAN/md5sums") || fail "pg$major: md5sums do not match"
    [ "$(cut -d' ' -f3- "$tmp/DEBIAN/md5sums" | LC_ALL=C sort)" = \
        "$(cd "$tmp/root" && find . -type f -printf '%P\n' | LC_ALL=C sort)" ] ||
        fail "pg$major: md5sums does not list exactly the package's files"
    got=$(find "$tmp/root" -mindepth 1 -printf '%y %s\n' |
        awk '$1 == "f" { kb += int(($2 + 1023) / 1024); next } { kb += 1 } END { print kb }')
    [ "$(dpkg-deb --field "$deb" Installed-Size)" = "$got" ] ||
        fail "pg$major: Installed-Size is $(dpkg-deb --field "$deb" Installed-Size), the files take $got KiB"

    # The documentation Debian policy asks for.
    local doc=$tmp/root/usr/share/doc/$pkg
    got=$(zcat "$doc/changelog.Debian.gz" | dpkg-parsechangelog -l - -S Version 2>/dev/null || true)
    [ "$got" = "$VERSION-1" ] || fail "pg$major: changelog.Debian.gz is at '$got', not $VERSION-1"
    zcat "$doc/changelog.gz" | cmp -s - CHANGELOG.md || fail "pg$major: changelog.gz is not CHANGELOG.md"
    grep -qx 'Files: \*' "$doc/copyright" && grep -qx 'License: Apache-2.0' "$doc/copyright" ||
        fail "pg$major: the copyright file does not give credential_rotate's Apache-2.0"
    grep -q '^Files: cargo-registry/aes-gcm-' "$doc/copyright" ||
        fail "pg$major: the copyright file does not list the linked crates"

    # lintian: no error, and only warnings docs/install.md justifies.
    lintian --display-level '>=warning' "$deb" >"$tmp/lintian" 2>/dev/null || true
    if grep -q '^E: ' "$tmp/lintian"; then
        fail "pg$major: lintian reports errors:"
        grep '^E: ' "$tmp/lintian" >&2
    fi
    for tag in $(sed -n 's/^W: [^ ]* \([a-z0-9-]*\).*/\1/p' "$tmp/lintian" | sort -u); do
        justified_tags | grep -qx "$tag" ||
            fail "pg$major: lintian warning $tag is not justified in docs/install.md"
    done
    [ "$failures" -eq "$before" ] || return 0
    echo "ok: pg$major: control fields, $(deb_paths "$major" | grep -c .) paths, modes, md5sums," \
        "changelogs, copyright; lintian: no error, $(grep -c '^W: ' "$tmp/lintian" || true) justified warnings"
}

for major in "${versions[@]}"; do
    check_package "$major"
done

[ "$failures" -eq 0 ] || exit 1
[[ " ${versions[*]} " == *" 15 "* ]] || exit 0

# Installing and removing the 15 package: tests/deb_install.sh, on the system's own
# PostgreSQL 15. CI machines are fresh and single-user: there it works on the system itself.
# Where CREDENTIAL_ROTATE_PG15_ROOT is set (developers sharing a machine), it runs in a private
# mount namespace whose /usr, /var and /etc are overlays of the real ones: the same commands
# on the same Debian 15, every write going to a scratch directory that goes with the test.
if [ -z "${CREDENTIAL_ROTATE_PG15_ROOT:-}" ]; then
    CREDENTIAL_ROTATE_DIST=$DIST bash tests/deb_install.sh
else
    overlay=$(mktemp -d /tmp/credential_rotate-deb-overlay.XXXXXX)
    echo "CREDENTIAL_ROTATE_PG15_ROOT is set: installing into overlays of /usr, /var and /etc" \
        "($overlay), not into the system"
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --propagation private env -u CREDENTIAL_ROTATE_PG15_ROOT \
        CREDENTIAL_ROTATE_DIST="$DIST" OVERLAY="$overlay" bash -c '
        set -e
        for d in usr var etc; do
            mkdir -p "$OVERLAY/$d/upper" "$OVERLAY/$d/work"
            mount -t overlay overlay "/$d" \
                -o "lowerdir=/$d,upperdir=$OVERLAY/$d/upper,workdir=$OVERLAY/$d/work"
        done
        exec bash tests/deb_install.sh'
fi
