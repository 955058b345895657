#!/usr/bin/env bash
# Server-log hygiene: after the suites ran failing calls that carry keys in their text, and
# after one more wrong-key call here, the server log holds the errors but never a key.
# $1: the test cluster's log file. Connection settings come from PG* variables.
set -euo pipefail
log_file=$1
vectors=$(cd "$(dirname "$0")" && pwd)/vectors/envelopes.json
key_a=$(node -e "console.log(require('$vectors').key_a)")
key_b=$(node -e "console.log(require('$vectors').key_b)")
wrong=$(psql -X -At -c "SELECT credential_generate_key()" -d credential_rotate_interop)

# A call that fails on a row under a third key, and one that fails on a bad key.
psql -X -q -d credential_rotate_interop >/dev/null 2>&1 <<SQL || true
SELECT * FROM credential_reencrypt('$wrong', '$key_b');
SQL
psql -X -q -d credential_rotate_interop >/dev/null 2>&1 <<SQL || true
SELECT credential_decrypt('{}'::jsonb, 'not-a-key-$key_b');
SQL

grep -q "does not open with old_key or new_key" "$log_file" ||
    { echo "the failing rotation was not logged at all: the check would prove nothing" >&2; exit 1; }
for secret in "$key_a" "$key_b" "$wrong"; do
    if grep -qF -- "$secret" "$log_file"; then
        echo "a key reached the server log:" >&2
        grep -nF -- "$secret" "$log_file" |
            sed -e "s|$key_a|<key a>|g" -e "s|$key_b|<key b>|g" -e "s|$wrong|<third key>|g" >&2
        exit 1
    fi
done
echo "server log: errors present, no key"
