#!/usr/bin/env bash
# credential-rotate against a server as a managed PostgreSQL presents itself: TCP on loopback,
# TLS with a certificate from a test CA (made here with openssl), SCRAM-SHA-256 passwords, and
# a role that owns the table but is no superuser and cannot create extensions. Runs its own
# cluster of PG_MAJOR on port PGPORT + 2, next to the one scripts/test.sh started.
#   verify-full with the right CA works (and channel binding, SCRAM-SHA-256-PLUS); a wrong CA,
#   or a host name the certificate does not name, is refused with nothing changed; verify-ca
#   accepts the name; require encrypts without checking, unless sslrootcert names a CA (as
#   libpq); a TLS-only role cannot connect without TLS; SCRAM without TLS works; a wrong
#   password is refused without being echoed.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"
BIN=${CREDENTIAL_ROTATE_BIN:-$REPO_ROOT/target/debug/credential-rotate}
TLS_PORT=$((${PGPORT:-54791} + 2))
load_test_keys
fail() { echo "FAILED: $*" >&2; exit 1; }

# The certificates: a CA, a server certificate for "localhost" only, and a stranger CA.
certs=$(mktemp -d)
trap 'rm -rf "$certs"' EXIT
(
    cd "$certs"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=credential-rotate test CA" \
        -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=stranger CA" \
        -keyout wrong.key -out wrong.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext.cnf -out server.crt 2>/dev/null
)
chmod 755 "$certs"
chown postgres "$certs/server.key" "$certs/server.crt"
chmod 600 "$certs/server.key"

cluster_start "$TLS_PORT" "-c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=$certs/server.crt \
    -c ssl_key_file=$certs/server.key -c password_encryption=scram-sha-256"
trap 'cluster_stop; rm -rf "$certs"' EXIT
# Local connections for the set-up; over TCP, TLS-only for the rotation role.
cat >"$CLUSTER_DIR/data/pg_hba.conf" <<'HBA'
local all postgres trust
hostssl all rotator 127.0.0.1/32 scram-sha-256
hostnossl all rotator 127.0.0.1/32 reject
host all auditor 127.0.0.1/32 scram-sha-256
HBA
psql -X -q -c "SELECT pg_reload_conf()" >/dev/null

PASSWORD='p@ss w:rd/1'
AUDITOR_PASSWORD='audit-pw'
psql -X -q -v ON_ERROR_STOP=1 <<SQL
CREATE ROLE rotator LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$PASSWORD';
CREATE ROLE auditor LOGIN PASSWORD '$AUDITOR_PASSWORD';
CREATE DATABASE app OWNER rotator;
SQL
psql -X -q -v ON_ERROR_STOP=1 -d app -c "SET ROLE rotator" -f tests/freeboard/credential_profiles.sql
CREDENTIAL_ENCRYPTION_KEY=$OLD node scripts/freeboard.mjs seed 500 |
    psql -X -q -v ON_ERROR_STOP=1 -d app -c "SET ROLE rotator" -f -
psql -X -q -d app -c "GRANT SELECT ON credential_profiles TO auditor"
snapshot() { psql -X -At -d app -c "SELECT md5(string_agg(id || secret::text, ',' ORDER BY id)) FROM credential_profiles"; }

# The role cannot install the extension: a managed server's table owner.
if PGPASSWORD=$PASSWORD psql -X -q "host=localhost port=$TLS_PORT user=rotator dbname=app sslmode=require" \
    -c "CREATE EXTENSION credential_rotate" 2>"$certs/ext.err"; then
    fail "a non-superuser created the extension"
fi
grep -q "permission denied\|must be superuser\|not allowed" "$certs/ext.err" ||
    fail "unexpected: $(cat "$certs/ext.err")"
echo "ok: the table owner cannot create the extension"

ENC=$(node -e "console.log(encodeURIComponent(process.argv[1]))" "$PASSWORD")
url() { echo "postgresql://rotator:$ENC@$1:$TLS_PORT/app?$2"; }
# Runs the program with the runbook's environment only; output into $certs/out and .err.
cli() {
    local url=$1
    shift
    env -i PATH="$PATH" DATABASE_URL="$url" CREDENTIAL_ENCRYPTION_KEY_OLD="$OLD" \
        CREDENTIAL_ENCRYPTION_KEY_NEW="$NEW" CREDENTIAL_ENCRYPTION_KEY="${VERIFY_KEY:-$NEW}" \
        "$BIN" "$@" >"$certs/out" 2>"$certs/err"
}
# $1: what, $2: expected exit status, $3: a pattern its stderr must hold; then the command.
expect() {
    local what=$1 want=$2 pattern=$3 status=0
    shift 3
    "$@" || status=$?
    [ "$status" = "$want" ] || fail "$what: exit $status, expected $want: $(cat "$certs/err")"
    grep -q -- "$pattern" "$certs/err" "$certs/out" || fail "$what: no '$pattern' in: $(cat "$certs/err")"
    ! grep -q -e "$OLD" -e "$NEW" -e "$PASSWORD" -e "$ENC" "$certs/err" "$certs/out" ||
        fail "$what: a key or the password was printed"
    echo "ok: $what ($(head -c 200 "$certs/err" | tail -n 1))"
}

before=$(snapshot)
expect "verify-full against a stranger CA is refused" 1 "invalid peer certificate" \
    cli "$(url localhost "sslmode=verify-full&sslrootcert=$certs/wrong.crt")"
expect "verify-full to a host name the certificate does not name is refused" 1 "invalid peer certificate" \
    cli "$(url 127.0.0.1 "sslmode=verify-full&sslrootcert=$certs/ca.crt")"
expect "require with a stranger CA as sslrootcert is refused, as libpq" 1 "invalid peer certificate" \
    cli "$(url localhost "sslmode=require&sslrootcert=$certs/wrong.crt")"
expect "a TLS-only role is refused without TLS" 1 "pg_hba.conf rejects connection" \
    cli "$(url localhost "sslmode=disable")"
expect "a wrong password is refused" 1 "password authentication failed" \
    cli "postgresql://rotator:wrong@localhost:$TLS_PORT/app?sslmode=require"
# No sslrootcert, and no ~/.postgresql/root.crt (the program runs without HOME here).
expect "verify-full without a root certificate is a set-up error" 2 "sslrootcert" \
    cli "$(url localhost "sslmode=verify-full")"
[ "$(snapshot)" = "$before" ] || fail "a refused connection changed the table"

expect "dry run over verify-ca to 127.0.0.1 (name not checked)" 0 "scanned=500 updated=495 already_current=0 empty=5 mode=client dry_run=true" \
    cli "$(url 127.0.0.1 "sslmode=verify-ca&sslrootcert=$certs/ca.crt")" --dry-run
expect "census over require (encrypted, unchecked)" 0 "not_readable=0 empty=5 malformed=0 mode=client" \
    cli "$(url localhost "sslmode=require")" census
[ "$(snapshot)" = "$before" ] || fail "a dry run or census changed the table"
expect "rotation over verify-full with the right CA, SCRAM with channel binding required" 0 \
    "scanned=500 updated=495 already_current=0 empty=5 mode=client" \
    cli "$(url localhost "sslmode=verify-full&sslrootcert=$certs/ca.crt&channel_binding=require")"
psql -X -At -d app -c "SELECT id || '|' || secret::text FROM credential_profiles" |
    CREDENTIAL_ENCRYPTION_KEY=$NEW node scripts/freeboard.mjs check
# SCRAM without TLS, a role that may only read: verify, the password from PGPASSWORD.
status=0
env -i PATH="$PATH" DATABASE_URL="postgresql://auditor@127.0.0.1:$TLS_PORT/app?sslmode=disable" \
    PGPASSWORD="$AUDITOR_PASSWORD" CREDENTIAL_ENCRYPTION_KEY="$NEW" "$BIN" verify >"$certs/out" 2>"$certs/err" ||
    status=$?
[ "$status" = 0 ] || fail "verify over SCRAM without TLS: $(cat "$certs/err")"
grep -qx "readable=495 not_readable=0 empty=5 malformed=0 mode=client" "$certs/out" ||
    fail "verify over SCRAM without TLS printed: $(cat "$certs/out")"
echo "ok: verify as a read-only role over SCRAM without TLS, password from PGPASSWORD"
