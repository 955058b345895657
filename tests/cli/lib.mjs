// Helpers for the credential-rotate program's integration tests: run the program with the
// runbook's environment (and nothing else of the caller's), seed tables with secrets sealed
// by the application's own node:crypto code, read them back and open them in Node.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseKey, sealSecret, openSecretText } from '../node/freeboard-crypto.mjs';
import { psql, sqlLiteral } from '../node/pg.mjs';

export { psql, sqlLiteral };

// psql for large results (every row of a table): no 1 MB cap on what it prints.
export function psqlAll(sql, db) {
  return execFileSync('psql', ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-d', db],
    { input: sql, encoding: 'utf8', maxBuffer: 1 << 30, stdio: ['pipe', 'pipe', 'pipe'] });
}

const vectors = JSON.parse(readFileSync(new URL('../vectors/envelopes.json', import.meta.url)));
export const OLD = vectors.key_a;
export const NEW = vectors.key_b;
// A third key, and a stranger's: generated per run, like any key the runbook makes.
export const OTHER = sealKeyText();
export const STRANGER = sealKeyText();
function sealKeyText() {
  return spawnSync(process.execPath, ['-e', "console.log(require('node:crypto').randomBytes(32).toString('base64'))"],
    { encoding: 'utf8' }).stdout.trim();
}

export const BIN = process.env.CREDENTIAL_ROTATE_BIN
  || fileURLToPath(new URL('../../target/debug/credential-rotate', import.meta.url));

// A libpq URL for database `db` over the cluster's Unix socket, as the user `user`.
export function urlFor(db, user = process.env.PGUSER) {
  return `postgresql://${user}@localhost/${db}?host=${encodeURIComponent(process.env.PGHOST)}&port=${process.env.PGPORT}`;
}

// Runs the program with exactly `env` (plus PATH) and `args`; returns status, stdout, stderr.
export function run(args, env) {
  const r = spawnSync(BIN, args, { env: { PATH: process.env.PATH, ...env }, encoding: 'utf8' });
  if (r.error) throw r.error;
  return r;
}

// The same, without waiting: the child process, and a promise of its outcome.
export function start(args, env) {
  const child = spawn(BIN, args, { env: { PATH: process.env.PATH, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const done = new Promise((resolve) => child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr })));
  return { child, done };
}

export function rotateEnv(db, oldKey = OLD, newKey = NEW, user) {
  return { DATABASE_URL: urlFor(db, user), CREDENTIAL_ENCRYPTION_KEY_OLD: oldKey, CREDENTIAL_ENCRYPTION_KEY_NEW: newKey };
}

export function freshDb(db) {
  psql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`, { db: 'postgres' });
  psql(`CREATE DATABASE ${db}`, { db: 'postgres' });
}

// Freeboard's table under `table` with `column` of `type`, holding `rows` secrets sealed by
// Node with `key` (each {"token":"t<i>"}), plus a '{}' row; returns the plaintexts by id.
// `extra` fields are added to each envelope, and `rawExtra` as JSON text (numbers JS cannot hold).
export function seedTable(db, { table = 'credential_profiles', column = 'secret', type = 'jsonb', rows = 20, key = OLD, extra = {}, rawExtra } = {}) {
  const k = parseKey(key);
  const plain = new Map();
  const values = [];
  for (let i = 0; i < rows; i++) {
    const id = `r${i}`;
    plain.set(id, JSON.stringify({ token: `t${i}`, n: i }));
    let text = JSON.stringify({ ...sealSecret({ token: `t${i}`, n: i }, k), ...extra });
    if (rawExtra) text = `${text.slice(0, -1)},${rawExtra}}`;
    values.push(`(${sqlLiteral(id)}, ${sqlLiteral(text)})`);
  }
  values.push(`('r-empty', '{}')`);
  psql(`CREATE TABLE ${table} (id text PRIMARY KEY, ${column} ${type} NOT NULL DEFAULT '{}');
        INSERT INTO ${table} (id, ${column}) VALUES ${values.join(',')};`, { db });
  return plain;
}

// Appends one row sealed with `key` (a stranger's, say).
export function addRow(db, id, key, { table = 'credential_profiles', column = 'secret' } = {}) {
  const sealed = JSON.stringify(sealSecret({ token: id }, parseKey(key)));
  psql(`INSERT INTO ${table} (id, ${column}) VALUES (${sqlLiteral(id)}, ${sqlLiteral(sealed)})`, { db });
}

// A digest of every row's stored text, in id order, and the row count: for "unchanged, byte
// for byte".
export function snapshot(db, { table = 'credential_profiles', column = 'secret' } = {}) {
  return psql(`SELECT count(*) || ' ' || md5(string_agg(id || '=' || ${column}::text, E'\\n' ORDER BY id)) FROM ${table}`, { db });
}

// Opens every stored secret in Node with `key`: the plaintext by id ({} and NULL skipped).
export function openAll(db, key, { table = 'credential_profiles', column = 'secret' } = {}) {
  const k = parseKey(key);
  const out = new Map();
  const lines = psqlAll(`SELECT id || '|' || ${column}::text FROM ${table} ORDER BY id`, db).split('\n').filter(Boolean);
  for (const line of lines) {
    const at = line.indexOf('|');
    const envelope = JSON.parse(line.slice(at + 1));
    if (Object.keys(envelope).length === 0) continue;
    out.set(line.slice(0, at), openSecretText(envelope, k));
  }
  return out;
}

// No key text in anything the program printed.
export function assertNoKeys(r, keys = [OLD, NEW, OTHER, STRANGER]) {
  for (const k of keys) {
    for (const part of [k, k.slice(0, 16), k.slice(20, 40)]) {
      assert.ok(!r.stdout.includes(part) && !r.stderr.includes(part), 'a key was printed');
    }
  }
}

export function summary(r) {
  return r.stdout.trim().split('\n').pop();
}
