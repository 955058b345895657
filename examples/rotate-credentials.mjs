#!/usr/bin/env node
// The runbook's "npm run credentials:reencrypt", done inside Postgres by credential_rotate.
//
// Reads the runbook's own environment:
//   DATABASE_URL (or FREEBOARD_POSTGRES_URL)
//   CREDENTIAL_ENCRYPTION_KEY_OLD, CREDENTIAL_ENCRYPTION_KEY_NEW
// CREDENTIAL_ENCRYPTION_KEY_OLD may hold several old keys separated by commas (a comma is not
// in the base64 alphabet): a secret that opens with any of them is re-encrypted.
// and, in one transaction, re-encrypts every credential_profiles.secret, checks that every
// secret now opens with the new key, and commits; or rolls back and exits non-zero.
// The keys travel as bound parameters: they are never part of any SQL text.
// Prints "scanned=N updated=M already_current=C empty=E" on success, and with several old keys
// a second line with the rows each one opened, by fingerprint.
import pg from 'pg';

const url = process.env.DATABASE_URL || process.env.FREEBOARD_POSTGRES_URL;
const oldKey = process.env.CREDENTIAL_ENCRYPTION_KEY_OLD;
const newKey = process.env.CREDENTIAL_ENCRYPTION_KEY_NEW;
const table = process.env.CREDENTIAL_TABLE || 'credential_profiles';

const missing = [
  !url && 'DATABASE_URL (or FREEBOARD_POSTGRES_URL)',
  !oldKey && 'CREDENTIAL_ENCRYPTION_KEY_OLD',
  !newKey && 'CREDENTIAL_ENCRYPTION_KEY_NEW',
].filter(Boolean);
if (missing.length) {
  console.error(`credential rotation: missing ${missing.join(', ')}`);
  process.exit(2);
}

// Spaces around a comma are the environment's, not the key's; an empty entry (",,") is kept
// and refused by the server by its position, like any other key that is not one.
const oldKeys = oldKey ? oldKey.split(',').map((k) => k.trim()) : [];

const client = new pg.Client({ connectionString: url, application_name: 'credential-rotation' });
// The NOTICE that ends a rotation from several keys names keys by fingerprint only.
let opened = null;
client.on('notice', (n) => {
  if (/^credential_reencrypt re-sealed /.test(n.message)) opened = n.message.replace(/^.*?, opened /, 'opened ');
});
try {
  await client.connect();
  await client.query('BEGIN');
  // Give up rather than queue behind a long transaction while the application waits on us.
  await client.query("SET LOCAL lock_timeout = '10s'");
  // One old key: the text form. Several: the array form ($1 bound as text[]).
  const { rows: [r] } = oldKeys.length > 1
    ? await client.query(
      'SELECT scanned, updated, already_current, empty FROM credential_reencrypt($1::text[], $2, $3)',
      [oldKeys, newKey, table],
    )
    : await client.query(
      'SELECT scanned, updated, already_current, empty FROM credential_reencrypt($1, $2, $3)',
      [oldKeys[0], newKey, table],
    );
  const { rows: [v] } = await client.query(
    'SELECT readable, not_readable, empty, malformed FROM credential_verify($1, $2)',
    [newKey, table],
  );
  if (Number(v.not_readable) !== 0 || Number(v.malformed) !== 0) {
    throw new Error(`after rotation ${v.not_readable} secrets do not open with the new key and ${v.malformed} are malformed`);
  }
  await client.query('COMMIT');
  console.log(`scanned=${r.scanned} updated=${r.updated} already_current=${r.already_current} empty=${r.empty}`);
  if (opened) console.log(opened);
} catch (err) {
  await client.query('ROLLBACK').catch(() => {});
  // Server messages name rows and arguments, never keys.
  console.error(`credential rotation failed, nothing changed: ${err.message}${err.code ? ` (SQLSTATE ${err.code})` : ''}`);
  process.exitCode = 1;
} finally {
  await client.end().catch(() => {});
}
