#!/usr/bin/env bash
# A rotation whose client goes away mid-call: psql killed with SIGKILL (over the Unix socket
# and over TCP), and the connection cut under a live client (a relay between them killed).
# Postgres notices a lost client only when it next writes to or reads from the socket, or, with
# client_connection_check_interval, when it polls it. Whatever happens, the table ends either
# fully rotated (committed, with its audit row) or byte-identical to before: never a mix.
# Which of the two each case gives is asserted too, with the server log's evidence:
# - autocommit, no message sent during the call (progress NOTICEs off, or below
#   client_min_messages): the rotation runs to the end and commits; the server finds the client
#   gone only when it sends the result, after the commit;
# - autocommit with progress NOTICEs: a NOTICE after the loss fails to send (over TCP the
#   second one) and the backend ends with FATAL "connection to client lost": rolled back;
# - client_connection_check_interval: the backend finds the loss within the interval: rolled back;
# - inside BEGIN (the client dies during the statement or after it, before COMMIT): rolled back.
# Restarts the cluster of scripts/test.sh to listen on 127.0.0.1 too, and restores it.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
ROWS=${LOST_ROWS:-50000}
DB=credential_rotate_lost
source "$REPO_ROOT/tests/lib/cluster.sh"
load_test_keys
CLIENT=""
RELAY=""
cleanup() {
    for pid in $CLIENT $RELAY; do kill -9 "$pid" 2>/dev/null || true; done
    # Back to the cluster as scripts/test.sh started it.
    if [ -n "${TCP_ON:-}" ]; then
        sudo -u postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m fast -w -t 600 stop >/dev/null || true
        cluster_start_again || true
    fi
}
trap cleanup EXIT

log_size() { stat -c %s "$CLUSTER_LOG"; }

# Restart listening on 127.0.0.1 as well (the test cluster listens on its Unix socket only).
sudo -u postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m fast -w -t 600 stop >/dev/null
TCP_ON=1
sudo -u postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_LOG" -w -t 600 \
    -o "$CLUSTER_OPTS -c listen_addresses=127.0.0.1" start >/dev/null

fresh_database
seed_profiles "$ROWS"
echo "seeded $ROWS rows ($SEALED sealed)"
FROM=$OLD
TO=$NEW

# A relay between a client and the server's Unix socket, to cut a connection under a live
# client: killing it closes both of its sockets, as a network failure reported by the peer.
relay_start() {
    mkdir -p "$CLUSTER_DIR/relay"
    # The previous case's relay left its socket file: gone before the new one binds, so that
    # the wait below sees the new relay's.
    rm -f "$CLUSTER_DIR/relay/.s.PGSQL.$PGPORT"
    cat >"$CLUSTER_DIR/relay.py" <<'PY'
import os, socket, sys, threading
listen, target = sys.argv[1], sys.argv[2]
if os.path.exists(listen):
    os.unlink(listen)
server = socket.socket(socket.AF_UNIX)
server.bind(listen)
server.listen(8)
def pipe(src, dst):
    while True:
        data = src.recv(65536)
        if not data:
            break
        dst.sendall(data)
    dst.shutdown(socket.SHUT_WR)
while True:
    client, _ = server.accept()
    upstream = socket.socket(socket.AF_UNIX)
    upstream.connect(target)
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
PY
    python3 "$CLUSTER_DIR/relay.py" "$CLUSTER_DIR/relay/.s.PGSQL.$PGPORT" "$PGHOST/.s.PGSQL.$PGPORT" &
    RELAY=$!
    # Not reported by the shell when killed.
    disown "$RELAY"
    for _ in $(seq 100); do [ -S "$CLUSTER_DIR/relay/.s.PGSQL.$PGPORT" ] && return 0; sleep 0.05; done
    fatal "the relay did not start"
}

# One case. $1 name, $2 transport (unix, tcp, relay), $3 what dies (client, relay),
# $4 when (statement: during the rotation; idle: after it, before COMMIT),
# $5 the SQL sent before the rotation (session settings, BEGIN). Sets OUTCOME and EVIDENCE.
run_case() {
    local name=$1 transport=$2 victim=$3 when=$4 setup=$5
    local host=$PGHOST before mark log_from backend fifo
    case $transport in
    tcp) host=127.0.0.1 ;;
    relay) relay_start; host=$CLUSTER_DIR/relay ;;
    esac
    before=$(fingerprint)
    mark=$(audit_mark)
    log_from=$(log_size)
    # The client reads its input from a FIFO kept open, so that it stays connected after the
    # rotation (inside BEGIN, waiting for a COMMIT that never comes).
    fifo=$CLUSTER_DIR/client.fifo
    rm -f "$fifo"
    mkfifo "$fifo"
    PGAPPNAME=lost_connection psql -X -q -h "$host" -d "$DB" <"$fifo" >"$CLUSTER_DIR/client.out" 2>&1 &
    CLIENT=$!
    disown "$CLIENT"
    exec 7>"$fifo"
    printf '%s\nSELECT * FROM credential_reencrypt(%s, %s);\n' "$setup" "'$FROM'" "'$TO'" >&7
    backend=""
    for _ in $(seq 200); do
        backend=$(q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'lost_connection'
                          AND query LIKE '%credential_reencrypt%' AND state = 'active'" || true)
        [ -n "$backend" ] && break
        sleep 0.05
    done
    [ -n "$backend" ] || fatal "$name: the rotation did not start: $(cat "$CLUSTER_DIR/client.out")"
    if [ "$when" = idle ]; then
        for _ in $(seq 1200); do
            [ "$(q -c "SELECT state FROM pg_stat_activity WHERE pid = $backend")" = "idle in transaction" ] && break
            sleep 0.05
        done
        [ "$(q -c "SELECT state FROM pg_stat_activity WHERE pid = $backend")" = "idle in transaction" ] ||
            fatal "$name: the rotation did not finish"
    else
        sleep "${LOST_AFTER:-0.2}"
        [ "$(q -c "SELECT state FROM pg_stat_activity WHERE pid = $backend")" = active ] ||
            fatal "$name: the rotation was over before the connection was lost: use more rows (LOST_ROWS)"
    fi
    case $victim in
    client) kill -9 "$CLIENT" ;;
    relay) kill -9 "$RELAY" ;;
    esac
    exec 7>&-
    # The backend ends once it has found the client gone.
    for _ in $(seq 1200); do
        [ -z "$(q -c "SELECT 1 FROM pg_stat_activity WHERE pid = $backend")" ] && break
        sleep 0.05
    done
    [ -z "$(q -c "SELECT 1 FROM pg_stat_activity WHERE pid = $backend")" ] ||
        fatal "$name: the backend of the lost client is still there"
    # A client that outlived its connection (the relay case) has reported it and exited.
    for _ in $(seq 100); do kill -0 "$CLIENT" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$CLIENT" 2>/dev/null && fatal "$name: the client is still running"
    CLIENT=""
    if [ -n "$RELAY" ]; then
        kill -9 "$RELAY" 2>/dev/null || true
        RELAY=""
    fi
    EVIDENCE=$(tail -c +"$((log_from + 1))" "$CLUSTER_LOG" | grep -o "\[$backend\] [A-Z]*: .*" || true)
    local after readable audited
    after=$(fingerprint)
    readable=$(q -c "SELECT readable FROM credential_verify('$TO')")
    audited=$(q -c "SELECT coalesce(sum(updated), 0) FROM credential_rotate_audit WHERE id > $mark")
    if [ "$after" = "$before" ] && [ "$audited" = 0 ]; then
        OUTCOME="rolled back"
    elif [ "$readable" = "$SEALED" ] && [ "$audited" = "$SEALED" ]; then
        OUTCOME=committed
        # The next case rotates back.
        local k=$FROM
        FROM=$TO
        TO=$k
    else
        OUTCOME="MIXED: $readable of $SEALED rows open with the new key, $audited audited"
    fi
    CLIENT_SAW=$(tr '\n' ' ' <"$CLUSTER_DIR/client.out")
    LAST=$name
}

# Checks the last case: $1 the outcome, $2 a pattern the server log must show for the rotating
# backend ("" for none), $3 a pattern the client's output must show ("" for none), $4 a pattern
# the server log must not show.
expect() {
    local outcome=$1 evidence=$2 client=$3 absent=${4:-} problems=""
    [ "$OUTCOME" = "$outcome" ] || problems="$OUTCOME, expected $outcome; "
    [ -z "$evidence" ] || grep -q "$evidence" <<<"$EVIDENCE" ||
        problems+="no \"$evidence\" in the server log ($(tr '\n' '|' <<<"$EVIDENCE")); "
    [ -z "$client" ] || grep -q "$client" <<<"$CLIENT_SAW" ||
        problems+="the client did not report \"$client\" ($CLIENT_SAW); "
    [ -z "$absent" ] || ! grep -q "$absent" <<<"$EVIDENCE" ||
        problems+="\"$absent\" in the server log: the rotation ran to its end; "
    if [ -z "$problems" ]; then
        echo "ok: $LAST: $OUTCOME${evidence:+ (server log: $evidence)}"
    else
        echo "FAILED: $LAST: $problems" >&2
        failures=$((failures + 1))
    fi
}

LOST="FATAL:  connection to client lost"
QUIET="SET credential_rotate.progress_rows = 0;"
NOTICES="SET credential_rotate.progress_rows = 1000;"
CHECK="$QUIET SET client_connection_check_interval = '100ms';"
log_start=$(log_size)

# Autocommit, nothing sent to the client during the call: the rotation commits, and only the
# result, sent after the commit, finds the client gone.
run_case "psql killed, Unix socket, autocommit" unix client statement "$QUIET"
expect committed "could not send data to client" ""
run_case "psql killed, TCP, autocommit" tcp client statement "$QUIET"
expect committed "" ""
# The client is still running when its connection is cut: it reports a lost connection, and
# yet the rotation committed.
run_case "connection cut under a live client, autocommit" relay relay statement "$QUIET"
expect committed "" "connection to server was lost"

# Progress NOTICEs: the first one after the loss cannot be sent, and the backend ends.
run_case "psql killed, Unix socket, autocommit, progress NOTICEs" unix client statement "$NOTICES"
expect "rolled back" "$LOST" ""
run_case "psql killed, TCP, autocommit, progress NOTICEs" tcp client statement "$NOTICES"
expect "rolled back" "$LOST" ""
# The same NOTICEs below client_min_messages are not sent: nothing finds the client gone.
run_case "psql killed, Unix socket, autocommit, progress NOTICEs not sent" unix client statement "$NOTICES SET client_min_messages = warning;"
expect committed "" ""

# client_connection_check_interval: the backend polls the socket during the call and ends
# mid-way, before it has anything to send.
run_case "psql killed, Unix socket, autocommit, client_connection_check_interval" unix client statement "$CHECK"
expect "rolled back" "$LOST" "" "could not send data"
run_case "psql killed, TCP, autocommit, client_connection_check_interval" tcp client statement "$CHECK"
expect "rolled back" "$LOST" "" "could not send data"
run_case "connection cut under a live client, client_connection_check_interval" relay relay statement "$CHECK"
expect "rolled back" "$LOST" "connection to server was lost" "could not send data"

# Inside BEGIN: the client dies during the rotation (the backend finds out when it sends the
# result) or after it, before COMMIT (the backend reads end of file while waiting).
run_case "psql killed during the rotation, inside BEGIN" unix client statement "$QUIET BEGIN;"
expect "rolled back" "$LOST" ""
run_case "psql killed after the rotation, before COMMIT" unix client idle "$QUIET BEGIN;"
expect "rolled back" "unexpected EOF on client connection with an open transaction" ""

# The statements of these calls held both keys; the lost connections' messages did not log them.
if tail -c +"$((log_start + 1))" "$CLUSTER_LOG" | grep -qF -e "$OLD" -e "$NEW"; then
    echo "FAILED: a key reached the server log" >&2
    failures=$((failures + 1))
else
    echo "ok: no key in the server log"
fi
[ "$failures" -eq 0 ]
