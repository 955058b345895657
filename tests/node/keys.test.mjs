// Key parity with the application: every spelling of a key that the application runs with,
// `Buffer.from(key.trim(), 'base64')` of exactly 32 bytes, is the same key to the extension,
// and what the application refuses the extension refuses too (SQLSTATE 22023, key not shown).
// The extension's view of a key is its fingerprint, checked against one computed here.
//
// The spellings come from a seeded stream, so a failure can be replayed with the seed it
// reports: KEYS_TEST_SEED=<seed> node --test tests/node/keys.test.mjs. Failure messages name
// the spelling class and the seed, never the spelling: test keys are still keys.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { createRequire } from 'node:module';
import { psql } from './pg.mjs';

// The examples' one dependency, installed by scripts/test.sh (node_interop).
const pg = createRequire(new URL('../../examples/package.json', import.meta.url))('pg');

const DB = 'credential_rotate_keys';
const SEED = process.env.KEYS_TEST_SEED ?? createHash('sha256').update(String(Math.random())).digest('hex').slice(0, 16);
const KEYS = 120;
const FINGERPRINT_LABEL = 'credential_rotate key fingerprint v1';

let client;

before(async () => {
  psql(`DROP DATABASE IF EXISTS ${DB}`, { db: 'postgres' });
  psql(`CREATE DATABASE ${DB}`, { db: 'postgres' });
  psql('CREATE EXTENSION credential_rotate', { db: DB });
  // Host, port and user from PGHOST, PGPORT and PGUSER, as psql takes them.
  client = new pg.Client({ database: DB });
  await client.connect();
});

after(async () => {
  await client?.end();
});

// Deterministic bytes from the seed: SHA-256 of (seed, counter), as a stream.
function stream(seed) {
  let counter = 0;
  let pool = Buffer.alloc(0);
  const bytes = (n) => {
    while (pool.length < n) {
      pool = Buffer.concat([pool, createHash('sha256').update(`${seed}:${counter++}`).digest()]);
    }
    const out = pool.subarray(0, n);
    pool = pool.subarray(n);
    return Buffer.from(out);
  };
  const int = (n) => bytes(4).readUInt32BE() % n;
  const pick = (list) => list[int(list.length)];
  return { bytes, int, pick };
}

// What the application does with CREDENTIAL_ENCRYPTION_KEY: the key, or null if refused.
function applicationKey(text) {
  const key = Buffer.from(text.trim(), 'base64');
  return key.length === 32 ? key : null;
}

// The documented recipe: HMAC-SHA256 keyed with the raw 32 key bytes, first 8 bytes in hex.
function fingerprint(rawKey) {
  return createHmac('sha256', rawKey).update(FINGERPRINT_LABEL).digest('hex').slice(0, 16);
}

// The extension's verdict on a spelling: { fingerprint } or { code, text } of its error.
async function extensionView(spelling) {
  try {
    const { rows } = await client.query('SELECT credential_key_fingerprint($1) AS fp', [spelling]);
    return { fingerprint: rows[0].fp };
  } catch (err) {
    return { code: err.code, text: [err.message, err.detail, err.hint].filter(Boolean).join('\n') };
  }
}

// Whether any 8-character run of `secret` appears in `text`.
function shows(text, secret) {
  for (let i = 0; i + 8 <= secret.length; i++) {
    if (text.includes(secret.slice(i, i + 8))) return true;
  }
  return false;
}

const ASCII_WHITESPACE = [' ', '\t', '\n', '\r', '\r\n', '\v', '\f'];
// ECMAScript WhiteSpace and LineTerminator beyond ASCII: what trim() removes.
const JS_WHITESPACE = ['\u00a0', '\u1680', '\u2000', '\u2007', '\u200a', '\u2028', '\u2029', '\u202f', '\u205f', '\u3000', '\ufeff'];
// Printable ASCII and controls outside the base64 alphabets and '=' (no NUL: not in text).
const ASCII_JUNK = [...'!"#$%&\'()*,.:;<>?@[\\]^`{|}~', '\u0001', '\u0007', '\u001b', '\u007f'];

function insertAt(text, index, what) {
  return text.slice(0, index) + what + text.slice(index);
}

// Spellings of one key, by class; `std` is the canonical 44-character standard base64.
function spellings(rng, raw) {
  const std = raw.toString('base64');
  const body = std.slice(0, 43);
  const url = raw.toString('base64url');
  const sprinkle = (text, pool, count) => {
    let out = text;
    for (let i = 0; i < count; i++) out = insertAt(out, 1 + rng.int(out.length - 1), rng.pick(pool));
    return out;
  };
  const wrap = (text, width, eol) => text.match(new RegExp(`.{1,${width}}`, 'gs')).join(eol) + eol;
  const mixed = [...std].map((c) => (rng.int(2) && c === '+' ? '-' : rng.int(2) && c === '/' ? '_' : c)).join('');
  // The last digit carries 4 key bits and 2 that Node drops: any value of those 2 is this key.
  const lastValue = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.indexOf(body[42]);
  const sameLast = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'[(lastValue & ~3) | rng.int(4)];
  const around = rng.pick([...ASCII_WHITESPACE, ...JS_WHITESPACE]);
  return [
    ['standard', std],
    ['unpadded', body],
    ['double padding', `${body}==`],
    ['URL-safe', url],
    ['URL-safe padded', `${url}=`],
    ['mixed alphabets', mixed],
    ['surrounding whitespace', `${rng.pick(ASCII_WHITESPACE)}${std}${rng.pick(ASCII_WHITESPACE)}`],
    ['surrounding JavaScript whitespace', `${around}${around}${mixed}${around}`],
    ['whitespace inside', sprinkle(std.slice(0, 43), ASCII_WHITESPACE, 1 + rng.int(8)) + '='],
    ['wrapped at 64 (LF)', wrap(std, 64, '\n')],
    ['wrapped at 76 (CRLF)', wrap(url, 76, '\r\n')],
    ['wrapped short (LF)', wrap(std, 4 + rng.int(36), '\n')],
    ['wrapped short (CRLF), unpadded', wrap(body, 4 + rng.int(36), '\r\n')],
    ['ASCII junk inside', sprinkle(body, ASCII_JUNK, 1 + rng.int(5))],
    ['trailing bits', `${body.slice(0, 42)}${sameLast}=`],
    ['text after the padding', `${std}${rng.pick(['=', ' # old key', '\u00e9\u0141', std])}`],
  ];
}

// Spellings the application refuses (not 32 bytes): the extension must refuse them as well.
function refusedSpellings(rng, raw) {
  const std = raw.toString('base64');
  const other = rng.bytes(33).toString('base64');
  return [
    ['a digit short', std.slice(0, 42)],
    ['a digit too many', `${std.slice(0, 43)}${rng.pick(['A', '-', '_', '+'])}=`],
    ['early padding', insertAt(std, 1 + rng.int(41), '=')],
    ['16 bytes', rng.bytes(16).toString('base64')],
    ['33 bytes', other],
    ['two keys run together', std.slice(0, 43) + std.slice(0, 43)],
    ['whitespace only', `${rng.pick(JS_WHITESPACE)} \n`],
    ['junk only', '!!!! ####'],
    ['junk with a few digits', `${std.slice(0, 10)}!?${std.slice(10, 20)}`],
  ];
}

test('every spelling the application runs with is the same key in the extension', async () => {
  const rng = stream(`${SEED}:accepted`);
  let checked = 0;
  for (let k = 0; k < KEYS; k++) {
    const raw = rng.bytes(32);
    const expected = fingerprint(raw);
    for (const [kind, spelling] of spellings(rng, raw)) {
      const app = applicationKey(spelling);
      assert.ok(app && app.equals(raw), `the application must read "${kind}" as the key (seed ${SEED}, key ${k})`);
      const view = await extensionView(spelling);
      assert.equal(view.code, undefined, `"${kind}" refused: ${view.code} (seed ${SEED}, key ${k})`);
      assert.equal(view.fingerprint, expected, `"${kind}" read as another key (seed ${SEED}, key ${k})`);
      checked++;
    }
  }
  assert.ok(checked >= KEYS * 16);
});

test('every spelling the application refuses is refused, with 22023, without showing it', async () => {
  const rng = stream(`${SEED}:refused`);
  for (let k = 0; k < KEYS / 4; k++) {
    const raw = rng.bytes(32);
    const std = raw.toString('base64');
    for (const [kind, spelling] of refusedSpellings(rng, raw)) {
      assert.equal(applicationKey(spelling), null, `the application must refuse "${kind}" (seed ${SEED})`);
      const view = await extensionView(spelling);
      assert.equal(view.code, '22023', `"${kind}" not refused with 22023 (seed ${SEED}, key ${k})`);
      assert.match(view.text, /is not a valid key: it (is empty|is not valid base64|decodes to \d+ bytes, not 32)/);
      assert.ok(!shows(view.text, std) && !shows(view.text, spelling.trim()), `"${kind}": the error shows the key`);
    }
  }
});

// Node reads a non-ASCII character by the low byte of each UTF-16 code unit ('Ł' as 'A',
// U+202F as '/', an emoji's high surrogate U+D83D as '='). The extension reads a key as the
// application does when Node skips the character, and refuses it otherwise (src/key.rs,
// node_skips, says why): it never reads a different key.
test('non-ASCII inside a key: the same key where Node skips it, refused where Node reads it', async () => {
  const rng = stream(`${SEED}:non-ascii`);
  const nodeSkips = (c) => Buffer.from(`AAA${c}AAAA`, 'base64').length === 5;
  const digitsAndPad = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=';
  const randomChar = () => {
    for (;;) {
      // Half of them with a base64 digit or '=' as low byte, the rest anywhere.
      const cp = rng.int(2)
        ? ((1 + rng.int(0xff)) << 8) | digitsAndPad.charCodeAt(rng.int(digitsAndPad.length))
        : 0x80 + rng.int(0x10ffff - 0x80);
      if (cp < 0xd800 || cp > 0xdfff) return String.fromCodePoint(cp);
    }
  };
  let skipped = 0;
  let read = 0;
  let applicationRuns = 0;
  for (let k = 0; k < KEYS * 3; k++) {
    const raw = rng.bytes(32);
    const std = raw.toString('base64');
    const c = randomChar();
    // Inside the key, in place of its last digit, or in place of its padding.
    const [place, spelling] = rng.pick([
      ['inside', insertAt(std, 1 + rng.int(42), c)],
      ['last digit', `${std.slice(0, 42)}${c}=`],
      ['padding', `${std.slice(0, 43)}${c}`],
    ]);
    const app = applicationKey(spelling);
    const view = await extensionView(spelling);
    const where = `U+${c.codePointAt(0).toString(16)} as ${place} (seed ${SEED}, key ${k})`;
    // In place of the padding, whitespace is trimmed by the application before it reads.
    if (nodeSkips(c) || (place === 'padding' && c.trim() === '')) {
      skipped++;
      if (app) {
        assert.equal(view.fingerprint, fingerprint(app), `skipped ${where}: ${view.code ?? 'another key'}`);
      } else {
        assert.equal(view.code, '22023', `skipped ${where}: the application refuses, the extension not`);
      }
    } else {
      read++;
      if (app) applicationRuns++;
      assert.equal(view.code, '22023', `not refused: ${where}`);
      assert.match(view.text, /it is not valid base64/);
      assert.ok(!shows(view.text, std), `the error shows the key: ${where}`);
    }
  }
  // The stream must have exercised both sides, and refusals the application would run with.
  assert.ok(skipped > 10 && read > 10 && applicationRuns > 5, `${skipped} skipped, ${read} read, ${applicationRuns}`);
});

test('the fingerprint is keyed with the raw 32 bytes, not with the base64 text', async () => {
  const rng = stream(`${SEED}:fingerprint`);
  const raw = rng.bytes(32);
  const std = raw.toString('base64');
  const { fingerprint: fp } = await extensionView(std);
  assert.equal(fp, createHmac('sha256', Buffer.from(std, 'base64')).update(FINGERPRINT_LABEL).digest('hex').slice(0, 16));
  assert.notEqual(fp, createHmac('sha256', std).update(FINGERPRINT_LABEL).digest('hex').slice(0, 16));
  // Pinned to the value src/key.rs pins for the shared test vectors' key_a.
  const { fingerprint: pinned } = await extensionView('y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q=');
  assert.equal(pinned, '8d3197a7dd0e26e7');
  assert.equal(fingerprint(Buffer.from('y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q=', 'base64')), pinned);
});
