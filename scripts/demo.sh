#!/usr/bin/env bash
# The main job end to end on a fresh machine: build and install credential_rotate, start a
# throwaway cluster on its own port, seed Freeboard-shaped rows sealed by node:crypto, rotate
# the key inside Postgres, verify, and prove that Node opens every result with the new key.
#   scripts/demo.sh [ROWS]     (default 10000)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ROWS=${1:-10000}
PORT=${CREDENTIAL_ROTATE_DEMO_PORT:-54792}

ensure_deps
install_extension release
cluster_start "$PORT"
createdb freeboard
export PGDATABASE=freeboard

psql -X -q -v ON_ERROR_STOP=1 -c "CREATE EXTENSION credential_rotate" -f tests/freeboard/credential_profiles.sql

# Two fresh keys, as the runbook generates them. They live in this shell only.
OLD_KEY=$(node scripts/freeboard.mjs keygen)
NEW_KEY=$(node scripts/freeboard.mjs keygen)

log "seeding $ROWS Freeboard-shaped rows sealed by node:crypto under the old key"
CREDENTIAL_ENCRYPTION_KEY=$OLD_KEY node scripts/freeboard.mjs seed "$ROWS" | psql -X -q -v ON_ERROR_STOP=1

log "rotating inside Postgres"
psql -X -q -At -v ON_ERROR_STOP=1 -v old="$OLD_KEY" -v new="$NEW_KEY" <<'SQL'
SELECT 'old key ' || credential_key_fingerprint(:'old') || ', new key ' || credential_key_fingerprint(:'new');
SELECT format('before: %s rows open with the old key, %s empty', readable, empty) FROM credential_verify(:'old');
BEGIN;
SELECT format('scanned=%s updated=%s already_current=%s empty=%s', scanned, updated, already_current, empty)
  FROM credential_reencrypt(:'old', :'new');
COMMIT;
SELECT format('after: %s rows open with the new key, %s with the old, %s empty, %s malformed',
              v.readable, o.readable, v.empty, v.malformed)
  FROM credential_verify(:'new') v, credential_verify(:'old') o;
SQL

log "opening every rotated secret in Node with the new key"
psql -X -At -c "SELECT id, secret FROM credential_profiles" |
    CREDENTIAL_ENCRYPTION_KEY=$NEW_KEY node scripts/freeboard.mjs check
