// Freeboard-side helpers for the demo and the benchmark, using the application's own crypto
// (tests/node/freeboard-crypto.mjs). Keys come from the environment, never from argv.
//   node scripts/freeboard.mjs keygen              -> a new key, as the runbook generates one
//   node scripts/freeboard.mjs seed N              -> SQL inserting N Freeboard-shaped rows
//                                                     sealed with $CREDENTIAL_ENCRYPTION_KEY
//   node scripts/freeboard.mjs check               -> opens every row (read as "id|secret"
//                                                     lines on stdin) with the key; prints counts
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { parseKey, sealSecret, openSecret } from '../tests/node/freeboard-crypto.mjs';

const [command, arg] = process.argv.slice(2);
const sql = (s) => `'${String(s).replace(/'/g, "''")}'`;

function profile(i) {
  switch (i % 4) {
    case 0: return ['bearer', { token: randomBytes(24).toString('hex') }];
    case 1: return ['basic', { username: `svc-${i}`, password: randomBytes(12).toString('base64') }];
    case 2: return ['header', { headerName: 'X-API-Key', headerValue: randomBytes(16).toString('hex') }];
    default: return ['none', {}];
  }
}

if (command === 'keygen') {
  console.log(randomBytes(32).toString('base64'));
} else if (command === 'seed') {
  const n = Number(arg);
  const key = parseKey(process.env.CREDENTIAL_ENCRYPTION_KEY);
  const out = [];
  out.push('COPY credential_profiles (id, name, type, metadata, secret, created_by) FROM STDIN;');
  for (let i = 1; i <= n; i++) {
    const [type, secret] = profile(i);
    // About 1% of rows hold the column default: no secret stored.
    const sealed = i % 100 === 0 ? '{}' : JSON.stringify(sealSecret(secret, key));
    const metadata = JSON.stringify({ source: `datasource-${i % 37}` });
    out.push([`cp-${String(i).padStart(7, '0')}`, `profile ${i}`, type, metadata, sealed, 'seed']
      .map((v) => v.replace(/\\/g, '\\\\').replace(/\t/g, '\\t')).join('\t'));
    if (out.length >= 10000) { process.stdout.write(out.join('\n') + '\n'); out.length = 0; }
  }
  out.push('\\.');
  process.stdout.write(out.join('\n') + '\n');
} else if (command === 'check') {
  const key = parseKey(process.env.CREDENTIAL_ENCRYPTION_KEY);
  let opened = 0, empty = 0, failed = 0;
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line) continue;
    const envelope = JSON.parse(line.slice(line.indexOf('|') + 1));
    if (Object.keys(envelope).length === 0) { empty++; continue; }
    try { openSecret(envelope, key); opened++; } catch { failed++; }
  }
  console.log(`node: ${opened} secrets open with the key, ${empty} empty, ${failed} do not open`);
  process.exit(failed === 0 ? 0 : 1);
} else {
  console.error('usage: freeboard.mjs keygen | seed N | check');
  process.exit(2);
}
