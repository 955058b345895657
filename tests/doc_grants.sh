#!/usr/bin/env bash
# The grant block of docs/security.md is the one the privileges test runs: its GRANT EXECUTE statements,
# with the role renamed, must appear in tests/pg_regress/sql/03_privileges.sql as written
# (comments and blank space aside). A grant added to one and not the other fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
normalise() { sed -e 's/--.*$//' -e 's/[[:space:]]\+/ /g' -e 's/^ //' -e 's/ $//' | tr '\n' ' ' | sed 's/  */ /g'; }
block=$(awk '/^CREATE ROLE credential_rotator NOLOGIN;/{on=1} on{print} /^GRANT credential_rotator TO alice;/{exit}' docs/security.md)
[ -n "$block" ] || { echo "FAILED: no grant block in docs/security.md" >&2; exit 1; }
grants=$(awk '/^GRANT EXECUTE/{on=1} on{print} on && /;/{on=0}' <<<"$block" | sed 's/credential_rotator/rotator/g' | normalise)
[ -n "$grants" ] || { echo "FAILED: the block in docs/security.md grants no EXECUTE" >&2; exit 1; }
tested=$(normalise < tests/pg_regress/sql/03_privileges.sql)
if [[ "$tested" == *"$grants"* ]]; then
    echo "ok: the grant block of docs/security.md is the one tests/pg_regress/sql/03_privileges.sql runs"
else
    echo "FAILED: the GRANT EXECUTE statements of docs/security.md are not the ones 03_privileges.sql runs:" >&2
    echo "$grants" >&2
    exit 1
fi
