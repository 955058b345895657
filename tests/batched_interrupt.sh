#!/usr/bin/env bash
# credential_reencrypt_batched interrupted for real, then called again: (a) pg_cancel_backend
# and (b) kill -9 of its backend once some batches have committed. The interrupted call leaves
# the committed batches under the new key and every other row under the old key (no row lost,
# none half-written); the second call completes, every sealed row opens with the new key with
# its plaintext unchanged, and the re-seals of both calls add up to the sealed rows exactly.
# (c) The application writes secrets under the old key, during the batches, into rows the batch
# front has already rotated: the final pass re-seals them, and after the CALL every row opens
# with the new key.
# Needs the test cluster of scripts/test.sh (PG* variables, CLUSTER_DIR, PG_BIN).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
ROWS=${BATCHED_ROWS:-20000}
BATCH=${BATCHED_BATCH_ROWS:-500}
DB=credential_rotate_batched
source "$REPO_ROOT/tests/lib/cluster.sh"
load_test_keys
CALL_PID=""
# A failed check leaves no background call behind.
trap '[ -z "$CALL_PID" ] || kill "$CALL_PID" 2>/dev/null || true' EXIT

# md5 over every sealed row's id and plaintext. $1: old, new, or both (whichever of the two
# keys opens the row: credential_reencrypt_value passes an envelope under the new key through).
# $2: an extra condition on the rows.
plaintexts() {
    local secret
    case $1 in
    old) secret="secret, '$OLD'" ;;
    new) secret="secret, '$NEW'" ;;
    both) secret="credential_reencrypt_value(secret, '$OLD', '$NEW'), '$NEW'" ;;
    esac
    q -c "SELECT md5(string_agg(id || '=' || credential_decrypt($secret), ',' ORDER BY id))
            FROM credential_profiles WHERE secret <> '{}' ${2:+AND $2}"
}
# Rows re-sealed since the seed: a committed write changes a row's xmin (key-agnostic and
# cheap enough to poll, unlike decrypting every row).
rewritten() { q -c "SELECT count(*) FROM credential_profiles WHERE xmin::text <> '$SEED_XMIN'"; }
audited() { q -c "SELECT coalesce(sum(updated), 0) FROM credential_rotate_audit WHERE id > $1"; }

seed() {
    q -c "TRUNCATE credential_profiles"
    seed_profiles "$ROWS"
    SEED_XMIN=$(q -c "SELECT min(xmin::text) FROM credential_profiles")
    [ "$(q -c "SELECT count(DISTINCT xmin::text) FROM credential_profiles")" = 1 ] || fatal "seed not in one transaction"
    PLAIN_BEFORE=$(plaintexts old)
    MARK=$(audit_mark)
}

# Starts the batched rotation in the background and waits until at least one batch has
# committed while the call is still running. Sets CALL_PID (psql) and BACKEND.
start_batched() {
    PGAPPNAME=batched_rotation psql -X -q -d "$DB" -v ON_ERROR_STOP=1 \
        -c "CALL credential_reencrypt_batched('$OLD', '$NEW', $BATCH)" >"$CLUSTER_DIR/batched.out" 2>&1 &
    CALL_PID=$!
    BACKEND=""
    for _ in $(seq 200); do
        BACKEND=$(q -c "SELECT pid FROM pg_stat_activity
                         WHERE application_name = 'batched_rotation' AND state = 'active'" || true)
        [ -n "$BACKEND" ] && [ "$(rewritten)" -gt 0 ] && break
        sleep 0.05
    done
    [ -n "$BACKEND" ] && [ "$(rewritten)" -gt 0 ] || fatal "no batch committed: $(cat "$CLUSTER_DIR/batched.out")"
    kill -0 "$CALL_PID" 2>/dev/null ||
        fatal "the batched call finished before the interruption: use more rows (BATCHED_ROWS)"
}


# After an interruption: rows of the committed batches under the new key, the rest under the
# old key, none lost, plaintexts unchanged, and really some of each.
check_interrupted() {
    local name=$1 new old
    new=$(q -c "SELECT readable FROM credential_verify('$NEW')")
    old=$(q -c "SELECT readable FROM credential_verify('$OLD')")
    if [ "$new" -gt 0 ] && [ "$old" -gt 0 ] && [ $((new + old)) = "$SEALED" ] &&
        [ "$(plaintexts both)" = "$PLAIN_BEFORE" ] && [ "$(audited "$MARK")" = "$new" ]; then
        ok "$name: interrupted mid-way, $new rows under the new key (the committed batches, as audited), $old under the old key, plaintexts unchanged"
    else
        failed "$name: after the interruption $new rows open with the new key and $old with the old key, of $SEALED (audited: $(audited "$MARK")), plaintexts $( [ "$(plaintexts both)" = "$PLAIN_BEFORE" ] && echo unchanged || echo CHANGED)"
    fi
    INTERRUPTED_NEW=$new
}

# Calls the batched rotation again, to completion: every sealed row under the new key, the
# plaintexts unchanged, and this call re-sealed exactly the rows the interrupted one had not.
check_resumed() {
    local name=$1 mark counts
    mark=$(audit_mark)
    q -c "CALL credential_reencrypt_batched('$OLD', '$NEW', $BATCH)" 2>"$CLUSTER_DIR/batched.out" ||
        { failed "$name: the second call failed: $(cat "$CLUSTER_DIR/batched.out")"; return; }
    counts=$(q -c "SELECT concat_ws(' ', readable, not_readable, malformed) FROM credential_verify('$NEW')")
    if [ "$counts" = "$SEALED 0 0" ] && [ "$(plaintexts new)" = "$PLAIN_BEFORE" ] &&
        [ "$(audited "$mark")" = $((SEALED - INTERRUPTED_NEW)) ] && [ "$(audited "$MARK")" = "$SEALED" ]; then
        ok "$name: called again, it completed: all $SEALED rows open with the new key, plaintexts unchanged; it re-sealed $((SEALED - INTERRUPTED_NEW)), the two calls $SEALED in all"
    else
        failed "$name: after the second call readable/not_readable/malformed = $counts of $SEALED; re-sealed by it $(audited "$mark") (expected $((SEALED - INTERRUPTED_NEW))), by both $(audited "$MARK"); plaintexts $( [ "$(plaintexts new)" = "$PLAIN_BEFORE" ] && echo unchanged || echo CHANGED)"
    fi
}

fresh_database

# (a) pg_cancel_backend.
seed
echo "seeded $ROWS rows ($SEALED sealed), batches of $BATCH rows"
start_batched
q -c "SELECT pg_cancel_backend($BACKEND)" >/dev/null
wait "$CALL_PID" 2>/dev/null || true
grep -q "canceling statement due to user request" "$CLUSTER_DIR/batched.out" ||
    failed "cancel: no cancel error: $(cat "$CLUSTER_DIR/batched.out")"
check_interrupted "pg_cancel_backend"
check_resumed "pg_cancel_backend"

# (b) kill -9 of the backend: the postmaster restarts every backend and replays the WAL; the
# committed batches survive, the one in progress is rolled back.
seed
start_batched
kill_backend "$BACKEND"
wait "$CALL_PID" 2>/dev/null || true
grep -q "server closed the connection\|connection to server was lost\|terminated" "$CLUSTER_DIR/batched.out" ||
    failed "kill -9: the killed call did not see its connection die: $(cat "$CLUSTER_DIR/batched.out")"
check_interrupted "kill -9 of the backend"
check_resumed "kill -9 of the backend"

# (c) Old-key writes behind the batch front. The rows stored in the table's first two blocks
# are in the first batch; once it has committed, the application rewrites them with new
# secrets sealed under the old key (as an instance still running with the old key would).
seed
q -c "CREATE TABLE written AS
        SELECT id FROM credential_profiles WHERE ctid < '(2,0)'::tid AND secret <> '{}'"
WRITTEN=$(q -c "SELECT count(*) FROM written")
[ "$WRITTEN" -gt 0 ] || fatal "no rows in the first blocks"
PLAIN_OTHERS=$(plaintexts old "id NOT IN (SELECT id FROM written)")
start_batched
for _ in $(seq 200); do
    pending=$(q -c "SELECT count(*) FROM credential_profiles c JOIN written USING (id) WHERE c.xmin::text = '$SEED_XMIN'")
    [ "$pending" = 0 ] && break
    sleep 0.05
done
[ "$pending" = 0 ] || fatal "the first batch did not commit the rows of the first blocks"
q -c "UPDATE credential_profiles c
         SET secret = credential_encrypt(format('{\"token\":\"late-%s\"}', c.id), '$OLD'), updated_at = now()
        FROM written w WHERE c.id = w.id"
# The batches are still going (rows not reached yet), so the final pass has not begun.
LEFT=$(q -c "SELECT count(*) FROM credential_profiles WHERE xmin::text = '$SEED_XMIN' AND secret <> '{}'")
[ "$LEFT" -gt 0 ] || fatal "the batches were over before the application's writes: use more rows (BATCHED_ROWS)"
echo "the application rewrote $WRITTEN rotated rows under the old key while $LEFT rows awaited their batch"
wait "$CALL_PID" || fatal "the batched call failed: $(cat "$CLUSTER_DIR/batched.out")"

counts=$(q -c "SELECT concat_ws(' ', readable, not_readable, malformed) FROM credential_verify('$NEW')")
[ "$counts" = "$SEALED 0 0" ] && ok "old-key writes during the batches: after the CALL all $SEALED rows open with the new key" ||
    failed "old-key writes during the batches: readable/not_readable/malformed = $counts of $SEALED"
late=$(q -c "SELECT count(*) FROM credential_profiles JOIN written USING (id)
              WHERE credential_decrypt(secret, '$NEW') = format('{\"token\":\"late-%s\"}', id)")
[ "$late" = "$WRITTEN" ] && [ "$(plaintexts new "id NOT IN (SELECT id FROM written)")" = "$PLAIN_OTHERS" ] &&
    ok "old-key writes during the batches: the $WRITTEN late secrets and every other plaintext survive" ||
    failed "old-key writes during the batches: $late of $WRITTEN late secrets open with the new key, other plaintexts $( [ "$(plaintexts new "id NOT IN (SELECT id FROM written)")" = "$PLAIN_OTHERS" ] && echo unchanged || echo CHANGED)"
# Each written row was re-sealed twice (before and after the application's write), every
# other row once.
[ "$(audited "$MARK")" = $((SEALED + WRITTEN)) ] ||
    failed "old-key writes during the batches: $(audited "$MARK") re-seals audited, expected $SEALED + $WRITTEN"
# The final pass is the last transaction to write the table: the rows carrying its xmin are
# the ones it re-sealed. They must be late writes only, at least one (the new versions of the
# late writes go behind the batch front or past the blocks the batches cover; a few may land
# ahead of it and be re-sealed by a later batch), and match its audit row, a whole-table scan.
final=$(q -c "SELECT count(*) FILTER (WHERE w.id IS NOT NULL) || ' ' || count(*)
                FROM credential_profiles c LEFT JOIN written w USING (id)
               WHERE c.xmin = (SELECT xmin FROM credential_profiles
                                ORDER BY xmin::text::bigint DESC LIMIT 1)")
final_audit=$(q -c "SELECT updated || ' ' || scanned FROM credential_rotate_audit ORDER BY id DESC LIMIT 1")
if [ "${final% *}" = "${final#* }" ] && [ "${final% *}" -gt 0 ] &&
    [ "$final_audit" = "${final% *} $ROWS" ]; then
    ok "old-key writes during the batches: the final pass (a scan of all $ROWS rows) re-sealed ${final% *} of the $WRITTEN late writes and nothing else (the batches reached the other $((WRITTEN - ${final% *})))"
else
    failed "old-key writes during the batches: the last transaction re-sealed ${final#* } rows of which ${final% *} late writes; the last audit row: updated scanned = $final_audit"
fi

[ "$failures" -eq 0 ]
