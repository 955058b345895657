#!/usr/bin/env node
// The runbook's "npm run credentials:reencrypt", done inside Postgres by credential_rotate.
//
// Reads the runbook's own environment:
//   DATABASE_URL (or FREEBOARD_POSTGRES_URL)
//   CREDENTIAL_ENCRYPTION_KEY_OLD, CREDENTIAL_ENCRYPTION_KEY_NEW
// and, in one transaction, re-encrypts every credential_profiles.secret, checks that every
// secret now opens with the new key, and commits; or rolls back and exits non-zero.
// The keys travel as bound parameters: they are never part of any SQL text.
// Prints "scanned=N updated=M already_current=C empty=E" on success.
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

const client = new pg.Client({ connectionString: url, application_name: 'credential-rotation' });
try {
  await client.connect();
  await client.query('BEGIN');
  // Give up rather than queue behind a long transaction while the application waits on us.
  await client.query("SET LOCAL lock_timeout = '10s'");
  const { rows: [r] } = await client.query(
    'SELECT scanned, updated, already_current, empty FROM credential_reencrypt($1, $2, $3)',
    [oldKey, newKey, table],
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
} catch (err) {
  await client.query('ROLLBACK').catch(() => {});
  // Server messages name rows and arguments, never keys.
  console.error(`credential rotation failed, nothing changed: ${err.message}${err.code ? ` (SQLSTATE ${err.code})` : ''}`);
  process.exitCode = 1;
} finally {
  await client.end().catch(() => {});
}
