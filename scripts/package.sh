#!/usr/bin/env bash
# Builds the release artifacts that install credential_rotate on a server without Rust, two per
# PostgreSQL major version:
#   dist/credential_rotate-<version>-pg<NN>-linux-x86_64.tar.gz (and a .sha256 beside it)
#   dist/postgresql-<NN>-credential-rotate_<version>-1_amd64.deb (packaging/debian/build.sh)
# both with the same files, at the paths of Debian's and PGDG's packages and of the official
# postgres:NN images, so that `tar -xzf <artifact> -C /` or `apt-get install ./<deb>` installs
# them there (the .deb adds its /usr/share/doc/postgresql-NN-credential-rotate):
#   usr/lib/postgresql/NN/lib/credential_rotate.so
#   usr/share/postgresql/NN/extension/credential_rotate.control
#   usr/share/postgresql/NN/extension/credential_rotate--*.sql   (every install and upgrade
#                                                                  script, previous releases' too)
#   scripts/package.sh [NN ...]        (default: every supported version, 15 16 17 18)
# CREDENTIAL_ROTATE_DIST: another output directory than dist/.
# Release builds (fat LTO): a few minutes per version on a 2-core machine.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
read -ra versions <<<"${*:-$PG_SUPPORTED}"
DIST=${CREDENTIAL_ROTATE_DIST:-$REPO_ROOT/dist}
EXT=credential_rotate
# The [package] version, the first version line of Cargo.toml.
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$VERSION" ] || { echo "no version in Cargo.toml" >&2; exit 1; }

ensure_deps "${versions[@]}"
bash scripts/assemble-sql.sh
mkdir -p "$DIST"

for major in "${versions[@]}"; do
    use_pg "$major"
    log "packaging $EXT $VERSION for PostgreSQL $major"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # cargo pgrx package writes the files under the build server's own paths (pg_config's
    # pkglibdir and sharedir, relative to --out-dir); they are moved to the Debian/PGDG ones.
    cargo pgrx package --pg-config "$PG_CONFIG" --no-default-features --features "pg$major" \
        --out-dir "$work/pgrx" >/dev/null
    built_lib=$work/pgrx/$("$PG_CONFIG" --pkglibdir)
    built_ext=$work/pgrx/$("$PG_CONFIG" --sharedir)/extension
    lib=$work/root/usr/lib/postgresql/$major/lib
    ext=$work/root/usr/share/postgresql/$major/extension
    mkdir -p "$lib" "$ext"
    # Stripped as dh_strip strips a Debian package's libraries: the symbols Postgres looks up
    # are dynamic ones and stay.
    install -m 755 "$built_lib/$EXT.so" "$lib/"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$lib/$EXT.so"
    install -m 644 "$built_ext/$EXT.control" "$built_ext/$EXT"--*.sql "$ext/"
    # cargo pgrx packages the current version's script and the upgrade scripts; a previous
    # release's install script (sql/credential_rotate--<version>.sql) is shipped too, as
    # install_extension does, so that a database can still be created at that version.
    for script in sql/"$EXT"--*.sql; do
        case $(basename "$script") in
        "$EXT"--*--*) ;;
        *) install -m 644 "$script" "$ext/" ;;
        esac
    done
    grep -qx "default_version = '$VERSION'" "$ext/$EXT.control" ||
        { echo "$ext/$EXT.control: default_version is not $VERSION" >&2; exit 1; }
    [ -f "$ext/$EXT--$VERSION.sql" ] || { echo "no $EXT--$VERSION.sql was packaged" >&2; exit 1; }

    artifact=$DIST/$EXT-$VERSION-pg$major-linux-x86_64.tar.gz
    # Files only, no directory entries: extracting into / then creates the directories a
    # server lacks and leaves the modes and owners of existing ones (/usr, ...) alone.
    (cd "$work/root" && find . -type f -printf '%P\n' | LC_ALL=C sort |
        tar -czf "$artifact" --owner=0 --group=0 --numeric-owner --no-recursion -T -)
    (cd "$DIST" && sha256sum "$(basename "$artifact")" >"$(basename "$artifact").sha256")
    deb=$(bash packaging/debian/build.sh "$major" "$VERSION" "$work/root" "$DIST")
    rm -rf "$work"
    trap - EXIT
    echo "$artifact"
    tar -tzvf "$artifact" | sed 's/^/    /'
    echo "$deb"
    dpkg-deb --contents "$deb" | sed 's/^/    /'
done
