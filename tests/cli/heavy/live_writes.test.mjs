// A client-mode rotation while the application keeps writing: pgbench clients update random
// rows with secrets sealed under the old key (an instance still running with the old key), in
// a database without the extension. No write is lost: every row holds the plaintext of its
// last committed write (or its seed), opened in Node; the rows still under the old key are
// exactly rows written after the rotation began waiting for its lock, and a re-run rotates
// exactly those.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseKey, sealSecret, openSecretText } from '../../node/freeboard-crypto.mjs';
import { OLD, NEW, run, start, rotateEnv, freshDb, psql, psqlAll, summary } from '../lib.mjs';

const DB = 'credential_rotate_cli_live';
const ROWS = Number(process.env.CLI_LIVE_ROWS || 20000);
const POOL = 3000;

// Every row's plaintext, opened in Node with whichever of the keys opens it.
function plaintexts() {
  const keys = [parseKey(NEW), parseKey(OLD)];
  const out = new Map();
  const underOld = new Set();
  for (const line of psqlAll('SELECT id || \'|\' || secret::text FROM credential_profiles', DB).split('\n').filter(Boolean)) {
    const at = line.indexOf('|');
    const id = line.slice(0, at);
    const envelope = JSON.parse(line.slice(at + 1));
    let text;
    try { text = openSecretText(envelope, keys[0]); } catch {
      text = openSecretText(envelope, keys[1]);
      underOld.add(id);
    }
    out.set(id, text);
  }
  return { out, underOld };
}

test('live application writes during a client-mode rotation: none lost', async () => {
  freshDb(DB);
  const old = parseKey(OLD);
  const rows = [];
  for (let i = 1; i <= ROWS; i++) rows.push(`cp-${i}\t${JSON.stringify(sealSecret({ token: `seed${i}` }, old))}`);
  const pool = [];
  for (let k = 1; k <= POOL; k++) pool.push(`${k}\t${JSON.stringify(sealSecret({ token: `w${k}` }, old))}`);
  psql(`CREATE TABLE credential_profiles (id text PRIMARY KEY, secret jsonb NOT NULL DEFAULT '{}',
          updated_at timestamptz NOT NULL DEFAULT now());
        COPY credential_profiles (id, secret) FROM STDIN;
${rows.join('\n')}
\\.
        CREATE TABLE pool (k int PRIMARY KEY, secret jsonb NOT NULL);
        COPY pool FROM STDIN;
${pool.join('\n')}
\\.
        CREATE SEQUENCE write_seq;
        CREATE TABLE writes (seq bigint PRIMARY KEY, id text NOT NULL, k int NOT NULL, at timestamptz NOT NULL);
        VACUUM ANALYZE;`, { db: DB });

  const script = `\\set n random(1, ${ROWS})
\\set k random(1, ${POOL})
BEGIN;
UPDATE credential_profiles SET secret = (SELECT secret FROM pool WHERE k = :k), updated_at = now()
 WHERE id = 'cp-' || :n;
INSERT INTO writes VALUES (nextval('write_seq'), 'cp-' || :n, :k, clock_timestamp());
COMMIT;
`;
  const scriptFile = join(mkdtempSync(join(tmpdir(), 'cli-live-')), 'writes.sql');
  writeFileSync(scriptFile, script);
  const bench = spawn('pgbench', ['-n', '-c', '3', '-T', '8', '-f', scriptFile, DB], { stdio: ['ignore', 'pipe', 'pipe'] });
  let benchOut = '';
  bench.stdout.on('data', (d) => { benchOut += d; });
  bench.stderr.on('data', (d) => { benchOut += d; });
  const benchDone = new Promise((resolve) => bench.on('close', resolve));
  await sleep(2000);
  const started = psql('SELECT clock_timestamp()', { db: DB }).trim();
  const { done } = start(['--batch-rows', '1000'], rotateEnv(DB));
  const r = await done;
  assert.equal(r.status, 0, r.stderr);
  assert.match(summary(r), new RegExp(`^scanned=${ROWS} updated=\\d+ already_current=0 empty=0 mode=client$`));
  assert.equal(await benchDone, 0, benchOut);

  const writes = Number(psql('SELECT count(*) FROM writes', { db: DB }).trim());
  assert.ok(writes > 100, `only ${writes} application writes: the test proves nothing`);
  const last = new Map();
  const late = new Set();
  for (const line of psql(`SELECT DISTINCT ON (id) id || '|' || k || '|' || (at > '${started}')
                             FROM writes ORDER BY id, seq DESC`, { db: DB }).split('\n').filter(Boolean)) {
    const [id, k, after] = line.split('|');
    last.set(id, k);
    if (after === 'true') late.add(id);
  }
  const { out, underOld } = plaintexts();
  assert.equal(out.size, ROWS);
  let lost = 0;
  for (const [id, text] of out) {
    const expected = last.has(id) ? `{"token":"w${last.get(id)}"}` : `{"token":"seed${id.slice(3)}"}`;
    if (text !== expected) lost++;
  }
  assert.equal(lost, 0, `${lost} rows do not hold their last committed write`);
  // Rows under the old key: only rows written after the rotation started waiting.
  assert.deepEqual([...underOld].filter((id) => !late.has(id)), []);
  const rerun = run([], rotateEnv(DB));
  assert.equal(rerun.status, 0, rerun.stderr);
  assert.equal(summary(rerun), `scanned=${ROWS} updated=${underOld.size} already_current=${ROWS - underOld.size} empty=0 mode=client`);
  console.log(`${writes} application writes, none lost; ${underOld.size} late writes re-sealed by the re-run`);
});
