// Interruptions of a client-mode rotation: the program killed (-9) mid-stream, its connection
// cut mid-stream, and its connection cut while COMMIT is in flight. Before COMMIT the table is
// unchanged, every time; during COMMIT the program says the outcome is unknown and how to find
// it out (exit 3), never "done".
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  OLD, NEW, start, run, rotateEnv, urlFor, freshDb, seedTable, snapshot, assertNoKeys, psql,
} from './lib.mjs';

const DB = 'credential_rotate_cli_faults';
const ROWS = Number(process.env.CLI_FAULT_ROWS || 30000);

before(() => {
  freshDb(DB);
  seedTable(DB, { rows: ROWS });
  psql('VACUUM ANALYZE credential_profiles', { db: DB });
});

// The program's backend once it has staged at least one batch (it has read, decided and
// re-sealed rows, and holds the table's lock), or null if the program ended first.
async function midStream(done) {
  let finished = false;
  done.then(() => { finished = true; });
  while (!finished) {
    const pid = psql(`SELECT a.pid FROM pg_stat_activity a
                       WHERE a.datname = '${DB}' AND a.application_name = 'credential-rotate'
                         AND a.query LIKE 'INSERT INTO pg_temp.credential_rotate_staged%'
                         AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted
                                       AND l.mode = 'ShareRowExclusiveLock'
                                       AND l.relation = 'credential_profiles'::regclass)`, { db: DB }).trim();
    if (pid) return pid;
    await sleep(10);
  }
  return null;
}

async function noBackendLeft() {
  for (let i = 0; i < 500; i++) {
    const n = psql(`SELECT count(*) FROM pg_stat_activity WHERE application_name = 'credential-rotate'`, { db: DB }).trim();
    if (n === '0') return;
    await sleep(20);
  }
  assert.fail('the program\'s backend is still there');
}

test('kill -9 of the program mid-stream: the table is unchanged and unlocked', async () => {
  const before = snapshot(DB);
  const { child, done } = start(['--batch-rows', '200'], rotateEnv(DB));
  const pid = await midStream(done);
  assert.ok(pid, 'the program finished before it could be interrupted');
  child.kill('SIGKILL');
  const r = await done;
  assert.equal(r.signal, 'SIGKILL');
  assert.equal(r.stdout, '');
  await noBackendLeft();
  assert.equal(snapshot(DB), before);
  // The lock went with the connection: a write goes through at once.
  psql("SET lock_timeout = '2s'; UPDATE credential_profiles SET secret = secret WHERE id = 'r0'", { db: DB });
});

test('the connection cut mid-stream: exit 1, the table is unchanged', async () => {
  const before = snapshot(DB);
  const { done } = start(['--batch-rows', '200'], rotateEnv(DB));
  const pid = await midStream(done);
  assert.ok(pid, 'the program finished before it could be interrupted');
  psql(`SELECT pg_terminate_backend(${pid})`, { db: DB });
  const r = await done;
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /the connection was lost|terminat/);
  assert.doesNotMatch(r.stdout, /scanned=/);
  assertNoKeys(r);
  assert.equal(snapshot(DB), before);
});

test('the connection cut while COMMIT is in flight: exit 3, outcome unknown, how to find out', async () => {
  // A deferred constraint trigger runs inside COMMIT: it holds COMMIT open long enough to
  // cut the connection there.
  psql(`CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN PERFORM pg_sleep(60); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER hold AFTER UPDATE ON credential_profiles DEFERRABLE INITIALLY DEFERRED
          FOR EACH ROW WHEN (NEW.id = 'r0') EXECUTE FUNCTION hold_commit()`, { db: DB });
  try {
    const { done } = start([], rotateEnv(DB));
    let pid = '';
    for (let i = 0; i < 3000 && !pid; i++) {
      pid = psql(`SELECT pid FROM pg_stat_activity WHERE datname = '${DB}'
                     AND application_name = 'credential-rotate' AND query = 'COMMIT'
                     AND wait_event = 'PgSleep'`, { db: DB }).trim();
      if (!pid) await sleep(10);
    }
    assert.ok(pid, 'COMMIT was never seen in flight');
    psql(`SELECT pg_terminate_backend(${pid})`, { db: DB });
    const r = await done;
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stderr, /the connection was lost while COMMIT was in flight/);
    assert.match(r.stderr, /may or may not have been committed/);
    assert.match(r.stderr, /credential-rotate verify/);
    assert.doesNotMatch(r.stdout, /scanned=/);
    await noBackendLeft();
  } finally {
    psql('DROP TRIGGER hold ON credential_profiles; DROP FUNCTION hold_commit()', { db: DB });
  }
  // Here it did not commit (the backend died before its commit record): verify says so.
  const v = run(['verify'], { DATABASE_URL: urlFor(DB), CREDENTIAL_ENCRYPTION_KEY: NEW });
  assert.equal(v.status, 1);
  assert.match(v.stdout, new RegExp(`^readable=0 not_readable=${ROWS} empty=1`));
  // A lock held elsewhere: the run gives up after --lock-timeout, exit 1, nothing changed.
  const before = snapshot(DB);
  const { child: holder } = await lockHolder();
  try {
    const t = run(['--lock-timeout', '200ms'], rotateEnv(DB));
    assert.equal(t.status, 1, t.stderr);
    assert.match(t.stderr, /lock timeout/);
  } finally {
    holder.kill();
  }
  assert.equal(snapshot(DB), before);
  const ok = run([], rotateEnv(DB, OLD, NEW));
  assert.equal(ok.status, 0, ok.stderr);
});

// A psql session holding a ROW EXCLUSIVE lock on the table until it is killed.
async function lockHolder() {
  const { spawn } = await import('node:child_process');
  const child = spawn('psql', ['-X', '-q', '-d', DB], { stdio: ['pipe', 'ignore', 'ignore'] });
  child.stdin.write('BEGIN; LOCK TABLE credential_profiles IN ROW EXCLUSIVE MODE;\n');
  for (let i = 0; i < 500; i++) {
    const n = psql(`SELECT count(*) FROM pg_locks WHERE relation = 'credential_profiles'::regclass
                      AND mode = 'RowExclusiveLock' AND granted`, { db: DB }).trim();
    if (n !== '0') return { child };
    await sleep(10);
  }
  child.kill();
  throw new Error('the lock holder never got its lock');
}
