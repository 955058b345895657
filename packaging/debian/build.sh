#!/usr/bin/env bash
# Builds the Debian package of one major version from the files scripts/package.sh laid out:
#   packaging/debian/build.sh NN VERSION PAYLOAD OUT
# PAYLOAD holds usr/lib/postgresql/NN/lib/credential_rotate.so and
# usr/share/postgresql/NN/extension/credential_rotate{.control,--*.sql}; the package
# OUT/postgresql-NN-credential-rotate_VERSION-1_amd64.deb gets them plus
# /usr/share/doc/postgresql-NN-credential-rotate/{copyright,changelog.gz,changelog.Debian.gz},
# a control file, md5sums, root ownership, 755/644 modes and timestamps of SOURCE_DATE_EPOCH
# (default: the last commit's). dpkg-deb only: no debhelper, no source package, no network.
# Prints the package's path.
set -euo pipefail
major=$1 version=$2 payload=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
pkg=postgresql-$major-credential-rotate
# Debian revision 1: one build per upstream version.
debversion=$version-1
deb=$out/${pkg}_${debversion}_amd64.deb
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
maintainer=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["maintainer"])' "$repo/META.json")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
doc=$root/usr/share/doc/$pkg
mkdir -p "$root/DEBIAN" "$doc"
cp -R "$payload/usr" "$root/"

gzip -9n <"$repo/CHANGELOG.md" >"$doc/changelog.gz"
# Debian's changelog of this package: one entry per build of an upstream version.
{
    printf '%s (%s) unstable; urgency=medium\n\n' "$pkg" "$debversion"
    printf '  * credential_rotate %s for PostgreSQL %s, built by scripts/package.sh.\n' "$version" "$major"
    printf '    What changed upstream: changelog.gz.\n\n'
    printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$epoch")"
} | gzip -9n >"$doc/changelog.Debian.gz"

# The crates linked into the library, with the same features as the build.
(cd "$repo" && cargo metadata --format-version 1 --locked --no-default-features \
    --features "pg$major" --filter-platform x86_64-unknown-linux-gnu >"$work/metadata.json")
(cd "$repo" && cargo tree --locked -e normal,no-proc-macro --no-default-features \
    --features "pg$major" --target x86_64-unknown-linux-gnu --prefix none --format '{p}') |
    python3 "$here/copyright.py" "$maintainer" "$(date -u -d "@$epoch" +%Y)" "$work/metadata.json" \
        >"$doc/copyright"

# The shared libraries the library needs, as dpkg-shlibdeps finds them (libc6, libgcc-s1);
# the server's own symbols are resolved by the postgres binary that loads it.
mkdir -p "$work/shlibs/debian"
printf 'Source: credential-rotate\n\nPackage: %s\nArchitecture: any\n' "$pkg" >"$work/shlibs/debian/control"
shlibs=$(cd "$work/shlibs" && dpkg-shlibdeps -O --warnings=0 \
    "$root/usr/lib/postgresql/$major/lib/credential_rotate.so" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "dpkg-shlibdeps found no dependencies of credential_rotate.so" >&2; exit 1; }

find "$root" -type d -exec chmod 755 {} +
find "$root" -type f -exec chmod 644 {} +
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
    xargs -d '\n' md5sum >DEBIAN/md5sums)
# As dpkg-gencontrol counts it: each file's size rounded up to KiB, 1 KiB per directory.
installed_size=$(find "$root" -mindepth 1 -path "$root/DEBIAN" -prune -o -printf '%y %s\n' |
    awk '$1 == "f" { kb += int(($2 + 1023) / 1024); next } { kb += 1 } END { print kb }')

cat >"$root/DEBIAN/control" <<EOF
Package: $pkg
Version: $debversion
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: postgresql-$major, $shlibs
Section: database
Priority: optional
Description: rotate the key sealing credential secrets inside PostgreSQL $major
 credential_rotate is a PostgreSQL extension that rotates the AES-256-GCM key
 sealing an application's credential secrets inside the database: every JSON
 envelope that opens with the old key is re-sealed under the new key in one
 statement, in the caller's transaction, and a secret it cannot open stops the
 call without changing anything. It also verifies keys, counts the rows each
 key opens, rotates in committed batches and keeps an audit trail of
 rotations.
 .
 This package is built for PostgreSQL $major. After installing it, run
 CREATE EXTENSION credential_rotate in each database that uses it, or
 ALTER EXTENSION credential_rotate UPDATE in a database that has an older
 version.
EOF
chmod 644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
find "$root" -exec touch -h -d "@$epoch" {} +

mkdir -p "$out"
SOURCE_DATE_EPOCH=$epoch dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
