// The runbook's client-side approach, for the benchmark only: read every row into Node.js,
// re-seal in the client, write each row back with its own autocommit UPDATE.
// Env: DATABASE_URL, CREDENTIAL_ENCRYPTION_KEY_OLD, CREDENTIAL_ENCRYPTION_KEY_NEW, TABLE.
import pg from '../examples/node_modules/pg/lib/index.js';
import { parseKey, sealSecret, openSecret } from '../tests/node/freeboard-crypto.mjs';

const oldKey = parseKey(process.env.CREDENTIAL_ENCRYPTION_KEY_OLD);
const newKey = parseKey(process.env.CREDENTIAL_ENCRYPTION_KEY_NEW);
const table = process.env.TABLE;
const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
await client.connect();
const { rows } = await client.query(`SELECT id, secret FROM ${table}`);
let updated = 0;
for (const row of rows) {
  const secret = row.secret && row.secret.ciphertext ? openSecret(row.secret, oldKey) : {};
  await client.query(`UPDATE ${table} SET secret = $1, updated_at = NOW() WHERE id = $2`,
    [sealSecret(secret, newKey), row.id]);
  updated++;
}
await client.end();
console.log(`scanned=${rows.length} updated=${updated}`);
