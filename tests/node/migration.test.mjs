// The shipped migration script (examples/rotate-credentials.mjs) run the way the runbook runs
// its step: from the runbook's environment variables, keys as bound parameters.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseKey, sealSecret, openSecret } from './freeboard-crypto.mjs';
import { psql, sqlLiteral } from './pg.mjs';

const vectors = JSON.parse(readFileSync(new URL('../vectors/envelopes.json', import.meta.url)));
const OLD = vectors.key_a;
const NEW = vectors.key_b;
const DB = 'credential_rotate_migration';
const script = fileURLToPath(new URL('../../examples/rotate-credentials.mjs', import.meta.url));
const url = `postgresql://${process.env.PGUSER}@localhost/${DB}?host=${encodeURIComponent(process.env.PGHOST)}&port=${process.env.PGPORT}`;

function run(env) {
  const clean = { PATH: process.env.PATH, ...env };
  return spawnSync(process.execPath, [script], { env: clean, encoding: 'utf8' });
}

function snapshot() {
  return psql('SELECT string_agg(id || secret::text, \',\' ORDER BY id) FROM credential_profiles', { db: DB });
}

before(() => {
  psql(`DROP DATABASE IF EXISTS ${DB}`, { db: 'postgres' });
  psql(`CREATE DATABASE ${DB}`, { db: 'postgres' });
  const key = parseKey(OLD);
  const rows = Array.from({ length: 25 }, (_, i) =>
    `('m${i}', 'm ${i}', ${sqlLiteral(JSON.stringify(sealSecret({ token: `t${i}` }, key)))})`);
  psql(`CREATE EXTENSION credential_rotate;
    CREATE TABLE credential_profiles (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
      secret JSONB NOT NULL DEFAULT '{}'::jsonb, updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
    INSERT INTO credential_profiles (id, name, secret) VALUES ${rows.join(',')};
    INSERT INTO credential_profiles (id, name) VALUES ('m-empty', 'no secret');`, { db: DB });
});

test('refuses to start without the runbook variables', () => {
  const r = run({ DATABASE_URL: url, CREDENTIAL_ENCRYPTION_KEY_OLD: OLD });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /CREDENTIAL_ENCRYPTION_KEY_NEW/);
});

test('a wrong old key fails, exits non-zero and changes nothing', () => {
  const before = snapshot();
  const wrong = psql('SELECT credential_generate_key()', { db: DB }).trim();
  const r = run({ FREEBOARD_POSTGRES_URL: url, CREDENTIAL_ENCRYPTION_KEY_OLD: wrong, CREDENTIAL_ENCRYPTION_KEY_NEW: NEW });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /nothing changed: cannot re-encrypt row \(id\)=\(m\d+\)/);
  assert.match(r.stderr, /SQLSTATE 22000/);
  for (const k of [wrong, NEW]) assert.ok(!r.stderr.includes(k) && !r.stdout.includes(k));
  assert.equal(snapshot(), before);
});

test('rotates from the environment and prints the counts; the application reads the new key', () => {
  const r = run({ DATABASE_URL: url, CREDENTIAL_ENCRYPTION_KEY_OLD: OLD, CREDENTIAL_ENCRYPTION_KEY_NEW: NEW });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'scanned=26 updated=25 already_current=0 empty=1');
  const key = parseKey(NEW);
  const rows = psql("SELECT secret::text FROM credential_profiles WHERE secret <> '{}'", { db: DB }).trim().split('\n');
  assert.equal(rows.length, 25);
  for (const row of rows) assert.match(openSecret(JSON.parse(row), key).token, /^t\d+$/);
  // Idempotent: a re-run finds everything current.
  const again = run({ DATABASE_URL: url, CREDENTIAL_ENCRYPTION_KEY_OLD: OLD, CREDENTIAL_ENCRYPTION_KEY_NEW: NEW });
  assert.equal(again.stdout.trim(), 'scanned=26 updated=0 already_current=25 empty=1');
  // Each committed run left an audit row (fingerprints only).
  const audit = psql('SELECT count(*) FROM credential_rotate_audit', { db: DB }).trim();
  assert.equal(audit, '2');
});

test('several old keys, comma-separated: every row opening with one of them is rotated', async () => {
  const { randomBytes } = await import('node:crypto');
  const third = randomBytes(32).toString('base64');
  const seal = (key, i) => sqlLiteral(JSON.stringify(sealSecret({ token: `s${i}` }, parseKey(key))));
  const rows = [];
  for (let i = 0; i < 10; i++) rows.push(`('s${i}', 's ${i}', ${seal(OLD, i)})`);
  for (let i = 10; i < 15; i++) rows.push(`('s${i}', 's ${i}', ${seal(third, i)})`);
  rows.push(`('s15', 's 15', ${seal(NEW, 15)})`);
  psql(`TRUNCATE credential_profiles;
    INSERT INTO credential_profiles (id, name, secret) VALUES ${rows.join(',')};
    INSERT INTO credential_profiles (id, name) VALUES ('s-empty', 'no secret');`, { db: DB });
  const fp = (key) => psql(`SELECT credential_key_fingerprint(${sqlLiteral(key)})`, { db: DB }).trim();

  // An empty entry is refused by its position, and nothing changes.
  const before = snapshot();
  const bad = run({ DATABASE_URL: url, CREDENTIAL_ENCRYPTION_KEY_OLD: `${OLD},,${third}`, CREDENTIAL_ENCRYPTION_KEY_NEW: NEW });
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /old_keys\[2\] is not a valid key: it is empty \(SQLSTATE 22023\)/);
  for (const k of [OLD, third, NEW]) assert.ok(!bad.stderr.includes(k) && !bad.stdout.includes(k));
  assert.equal(snapshot(), before);

  const r = run({ DATABASE_URL: url, CREDENTIAL_ENCRYPTION_KEY_OLD: `${OLD}, ${third}`, CREDENTIAL_ENCRYPTION_KEY_NEW: NEW });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), [
    'scanned=17 updated=15 already_current=1 empty=1',
    `opened 10 with old key ${fp(OLD)}, 5 with old key ${fp(third)}`,
  ].join('\n'));
  for (const k of [OLD, third, NEW]) assert.ok(!r.stderr.includes(k) && !r.stdout.includes(k));
  const key = parseKey(NEW);
  const secrets = psql("SELECT id || '|' || secret::text FROM credential_profiles WHERE secret <> '{}' ORDER BY id", { db: DB })
    .trim().split('\n');
  assert.equal(secrets.length, 16);
  for (const line of secrets) {
    const [id, secret] = [line.slice(0, line.indexOf('|')), line.slice(line.indexOf('|') + 1)];
    assert.equal(openSecret(JSON.parse(secret), key).token, id);
  }
});
