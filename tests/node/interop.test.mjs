// Interop with the application's runtime: rows sealed by node:crypto are rotated by the
// extension and open again in node:crypto; rows sealed by the extension open in node:crypto.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parseKey, sealSecret, openSecret, openSecretText } from './freeboard-crypto.mjs';
import { psql, sqlLiteral } from './pg.mjs';

const vectors = JSON.parse(readFileSync(new URL('../vectors/envelopes.json', import.meta.url)));
const OLD = vectors.key_a;
const NEW = vectors.key_b;
const DB = 'credential_rotate_interop';

const secrets = [
  { token: 'abc123' },
  { username: 'svc-reader', password: 'pä§s☃"quote\\back' },
  { headerName: 'X-API-Key', headerValue: 'k-' + 'z'.repeat(300) },
  {},
  { nested: { a: [1, 2.5, null, true], emoji: '🔑' } },
];

function query(sql) {
  return psql(sql, { db: DB });
}

function rows() {
  return query('SELECT id, secret::text FROM credential_profiles ORDER BY id')
    .trim().split('\n').filter(Boolean)
    .map((line) => { const i = line.indexOf('|'); return [line.slice(0, i), JSON.parse(line.slice(i + 1))]; });
}

function reencrypt(oldKey, newKey) {
  const [scanned, updated, current, empty] = query(
    `SELECT scanned, updated, already_current, empty FROM credential_reencrypt(${sqlLiteral(oldKey)}, ${sqlLiteral(newKey)})`,
  ).trim().split('|').map(Number);
  return { scanned, updated, current, empty };
}

before(() => {
  psql(`DROP DATABASE IF EXISTS ${DB}`, { db: 'postgres' });
  psql(`CREATE DATABASE ${DB}`, { db: 'postgres' });
  query('CREATE EXTENSION credential_rotate');
  query(readFileSync(new URL('../freeboard/credential_profiles.sql', import.meta.url), 'utf8'));
});

test('rows sealed by node:crypto rotate in Postgres and open again in node:crypto', () => {
  const oldKey = parseKey(OLD);
  const newKey = parseKey(NEW);
  query('TRUNCATE credential_profiles');
  const values = [];
  for (let i = 0; i < 200; i++) {
    const secret = { ...secrets[i % secrets.length], n: i };
    values.push(`(${sqlLiteral('n' + String(i).padStart(3, '0'))}, ${sqlLiteral('p' + i)}, ${sqlLiteral(JSON.stringify(sealSecret(secret, oldKey)))}::jsonb)`);
  }
  values.push(`('n999', 'no secret', '{}'::jsonb)`);
  query(`INSERT INTO credential_profiles (id, name, secret) VALUES ${values.join(',\n')}`);
  const before = rows();

  assert.deepEqual(reencrypt(OLD, NEW), { scanned: 201, updated: 200, current: 0, empty: 1 });

  const after = new Map(rows());
  for (const [id, envelope] of before) {
    const rotated = after.get(id);
    if (id === 'n999') { assert.deepEqual(rotated, {}); continue; }
    // The same plaintext bytes, as the application reads them with the new key.
    assert.equal(openSecretText(rotated, newKey), openSecretText(envelope, oldKey));
    assert.throws(() => openSecret(rotated, oldKey), /unable to authenticate|Unsupported state/);
    assert.notEqual(rotated.iv, envelope.iv);
    assert.equal(rotated.keyId, 'v1');
    assert.equal(Buffer.from(rotated.iv, 'base64').length, 12);
    assert.equal(Buffer.from(rotated.authTag, 'base64').length, 16);
    assert.equal(Buffer.from(rotated.iv, 'base64').toString('base64'), rotated.iv, 'padded standard base64');
  }

  // Rolling back with the keys swapped: the application opens everything with the old key.
  assert.deepEqual(reencrypt(NEW, OLD), { scanned: 201, updated: 200, current: 0, empty: 1 });
  for (const [id, envelope] of rows()) {
    if (id === 'n999') continue;
    assert.equal(openSecret(envelope, oldKey).n, Number(id.slice(1)));
  }
});

test('the Node vectors open in Postgres to their exact plaintext', () => {
  for (const { plaintext, envelope } of vectors.good) {
    const opened = query(`SELECT credential_decrypt(${sqlLiteral(JSON.stringify(envelope))}::jsonb, ${sqlLiteral(OLD)})`);
    assert.equal(opened.replace(/\n$/, ''), plaintext);
  }
});

test('envelopes sealed by the extension open in node:crypto', () => {
  const key = parseKey(NEW);
  for (const secret of secrets) {
    const text = JSON.stringify(secret);
    const envelope = JSON.parse(query(`SELECT credential_encrypt(${sqlLiteral(text)}::text, ${sqlLiteral(NEW)})::text`));
    assert.equal(openSecretText(envelope, key), text);
    assert.deepEqual(Object.keys(envelope).sort(), ['algorithm', 'authTag', 'ciphertext', 'iv', 'keyId']);
    // jsonb input: sealed as JSON.stringify would write it.
    const viaJsonb = JSON.parse(query(`SELECT credential_encrypt(${sqlLiteral(text)}::jsonb, ${sqlLiteral(NEW)})::text`));
    assert.deepEqual(openSecret(viaJsonb, key), secret);
  }
});

test('a key generated in Postgres is one the application accepts', () => {
  const generated = query('SELECT credential_generate_key()').trim();
  const key = parseKey(generated);
  assert.equal(key.length, 32);
  const envelope = sealSecret({ token: 't' }, key);
  assert.equal(query(`SELECT credential_decrypt(${sqlLiteral(JSON.stringify(envelope))}::jsonb, ${sqlLiteral(generated)})`).trim(), '{"token":"t"}');
});

test('rows sealed by node:crypto under three keys rotate in one call and open with the new key', async () => {
  const { randomBytes } = await import('node:crypto');
  // Three old keys as three deployments of the application held them, and a new one.
  const oldTexts = [OLD, NEW, randomBytes(32).toString('base64')];
  const newText = randomBytes(32).toString('base64');
  const oldKeys = oldTexts.map(parseKey);
  query('TRUNCATE credential_profiles');
  const values = [];
  const sealedWith = new Map();
  for (let i = 0; i < 90; i++) {
    const id = 'm' + String(i).padStart(3, '0');
    // Runs of rows under one key, as successive deployments write them, then interleaved.
    const k = i < 60 ? Math.floor(i / 20) : i % 3;
    sealedWith.set(id, k);
    const secret = { ...secrets[i % secrets.length], n: i };
    values.push(`(${sqlLiteral(id)}, ${sqlLiteral('p' + i)}, ${sqlLiteral(JSON.stringify(sealSecret(secret, oldKeys[k])))}::jsonb)`);
  }
  values.push(`('m999', 'no secret', '{}'::jsonb)`);
  query(`INSERT INTO credential_profiles (id, name, secret) VALUES ${values.join(',\n')}`);
  const before = new Map(rows());
  const array = `ARRAY[${oldTexts.map(sqlLiteral).join(', ')}]`;

  const census = (keys) => query(`SELECT coalesce(key_fingerprint, '-'), status, rows FROM credential_key_census(ARRAY[${keys.map(sqlLiteral).join(', ')}])`)
    .trim().split('\n').map((line) => line.split('|'));
  const fingerprints = [...oldTexts, newText].map((k) => query(`SELECT credential_key_fingerprint(${sqlLiteral(k)})`).trim());
  assert.deepEqual(census([...oldTexts, newText]), [
    [fingerprints[0], 'readable', '30'], [fingerprints[1], 'readable', '30'],
    [fingerprints[2], 'readable', '30'], [fingerprints[3], 'readable', '0'],
    ['-', 'not_readable', '0'], ['-', 'empty', '1'], ['-', 'malformed', '0'],
  ]);

  const [scanned, updated, current, empty] = query(
    `SELECT scanned, updated, already_current, empty FROM credential_reencrypt(${array}, ${sqlLiteral(newText)})`,
  ).trim().split('|').map(Number);
  assert.deepEqual({ scanned, updated, current, empty }, { scanned: 91, updated: 90, current: 0, empty: 1 });

  const newKey = parseKey(newText);
  for (const [id, rotated] of rows()) {
    if (id === 'm999') { assert.deepEqual(rotated, {}); continue; }
    const k = sealedWith.get(id);
    // The application, now configured with the new key only, reads the same plaintext bytes.
    assert.equal(openSecretText(rotated, newKey), openSecretText(before.get(id), oldKeys[k]));
    for (const old of oldKeys) assert.throws(() => openSecret(rotated, old), /unable to authenticate|Unsupported state/);
    assert.equal(rotated.keyId, 'v1');
  }
  assert.deepEqual(census([...oldTexts, newText]).map((r) => r[2]), ['0', '0', '0', '90', '0', '1', '0']);
  // The audit row counts the rows each old key opened, by fingerprint; no key anywhere.
  const audit = JSON.parse(query('SELECT rows_by_old_key FROM credential_rotate_audit ORDER BY id DESC LIMIT 1'));
  assert.deepEqual(audit, { [fingerprints[0]]: 30, [fingerprints[1]]: 30, [fingerprints[2]]: 30 });
  const auditText = query('SELECT row_to_json(a)::text FROM credential_rotate_audit a');
  for (const k of [...oldTexts, newText]) assert.ok(!auditText.includes(k));
});
