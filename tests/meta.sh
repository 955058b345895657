#!/usr/bin/env bash
# The PGXN distribution metadata and the one version number:
#   - META.json is valid under the PGXN Meta Spec (the pinned validator pgxn_meta, which
#     ensure_deps installs), and the validator refuses a copy with a license PGXN does not know;
#   - the version of Cargo.toml (the release's) is META.json's version and its
#     provides.credential_rotate version, the default_version of the control file in every
#     artifact (.tar.gz and .deb; the control file in the repository says @CARGO_VERSION@),
#     the .deb's Version (<version>-1), the package examples/docker/Dockerfile installs, and
#     has a heading in CHANGELOG.md;
#   - the files META.json names exist.
#   tests/meta.sh [NN ...]    (default: 15 16 17 18; the artifacts in CREDENTIAL_ROTATE_DIST, as
#                              scripts/test.sh passes them, or built with scripts/package.sh)
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"
read -ra versions <<<"${*:-$PG_SUPPORTED}"
source tests/lib/artifacts.sh
SCRATCH=$(mktemp -d /tmp/credential_rotate-meta.XXXXXX)
ARTIFACTS_BUILT=
trap 'rm -rf "$SCRATCH"; [ -z "$ARTIFACTS_BUILT" ] || rm -rf "$DIST"' EXIT
failures=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }
meta() { python3 -c 'import json, sys
v = json.load(open("META.json"))
for k in sys.argv[1:]:
    v = v[k]
print(v)' "$@"; }

[ -n "$VERSION" ] || { echo "no version in Cargo.toml" >&2; exit 1; }

if out=$(pgxn_meta META.json 2>&1); then
    echo "ok: $out (pgxn_meta $(pgxn_meta --version | cut -d' ' -f2), PGXN Meta Spec $(meta meta-spec version))"
else
    fail "META.json is not valid PGXN metadata: $out"
fi
# The validator must be able to fail: a license name outside the spec's list.
python3 -c 'import json; m = json.load(open("META.json")); m["license"] = "apache-2.0"; print(json.dumps(m))' \
    >"$SCRATCH/META.json"
if pgxn_meta "$SCRATCH/META.json" >/dev/null 2>&1; then
    fail "pgxn_meta accepted a META.json with the license \"apache-2.0\""
else
    echo "ok: pgxn_meta refuses a META.json with a license the spec does not know"
fi

[ "$(meta version)" = "$VERSION" ] || fail "META.json's version is $(meta version), Cargo.toml's $VERSION"
[ "$(meta provides credential_rotate version)" = "$VERSION" ] ||
    fail "META.json's provides.credential_rotate.version is $(meta provides credential_rotate version), not $VERSION"
for key in file docfile; do
    [ -f "$(meta provides credential_rotate "$key")" ] || fail "META.json's $key $(meta provides credential_rotate "$key") does not exist"
done
grep -q "^## $VERSION\b" CHANGELOG.md || fail "CHANGELOG.md has no section for $VERSION"
grep -qx "ARG CREDENTIAL_ROTATE_VERSION=$VERSION" examples/docker/Dockerfile ||
    fail "examples/docker/Dockerfile installs another version's package than $VERSION"
grep -qx "default_version = '@CARGO_VERSION@'" credential_rotate.control ||
    fail "credential_rotate.control's default_version is not @CARGO_VERSION@ (the version is Cargo.toml's)"

artifacts_for "${versions[@]}"
for major in "${versions[@]}"; do
    control=usr/share/postgresql/$major/extension/$EXT.control
    got=$(tar -xzOf "$(tarball_of "$major")" "$control" | sed -n "s/^default_version = '\(.*\)'$/\1/p")
    [ "$got" = "$VERSION" ] || fail "pg$major: the tarball's control file has default_version $got"
    got=$(dpkg-deb --fsys-tarfile "$(deb_of "$major")" | tar -xOf - "./$control" |
        sed -n "s/^default_version = '\(.*\)'$/\1/p")
    [ "$got" = "$VERSION" ] || fail "pg$major: the .deb's control file has default_version $got"
    [ "$(dpkg-deb --field "$(deb_of "$major")" Version)" = "$VERSION-1" ] ||
        fail "pg$major: the .deb's Version is $(dpkg-deb --field "$(deb_of "$major")" Version)"
done

[ "$failures" -eq 0 ] || exit 1
echo "ok: version $VERSION in Cargo.toml, META.json, CHANGELOG.md and the artifacts of ${versions[*]}"
