// The same data gives the same counts in extension mode and in client mode; auto picks the
// extension where it is installed and executable, and client mode where the role may not
// execute it. Needs the extension installed in the cluster (scripts/test.sh installs it).
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  OLD, NEW, OTHER, STRANGER, run, rotateEnv, urlFor, freshDb, seedTable, addRow, openAll,
  snapshot, assertNoKeys, summary, psql, sqlLiteral,
} from './lib.mjs';

const DB = 'credential_rotate_cli_modes';

before(() => {
  freshDb(DB);
  psql('CREATE EXTENSION credential_rotate', { db: DB });
});

// Two tables holding the same stored values: under the old key, under a second old key,
// already under the new key, '{}'.
function twins() {
  psql('DROP TABLE IF EXISTS t_ext, t_client', { db: DB });
  const plain = seedTable(DB, { table: 't_ext', rows: 40 });
  addRow(DB, 'current', NEW, { table: 't_ext' });
  addRow(DB, 'older', OTHER, { table: 't_ext' });
  psql('CREATE TABLE t_client (LIKE t_ext INCLUDING ALL); INSERT INTO t_client SELECT * FROM t_ext', { db: DB });
  return plain;
}

function line(r) {
  return summary(r).replace(/ mode=\w+/, '');
}

test('dry run, rotation, verify and census: the same counts in both modes', () => {
  const plain = twins();
  const env = rotateEnv(DB, `${OLD},${OTHER}`, NEW);
  const results = {};
  for (const mode of ['extension', 'client']) {
    const table = mode === 'extension' ? 't_ext' : 't_client';
    const args = ['--mode', mode, '--table', table];
    const dry = run([...args, '--dry-run'], env);
    const census = run([...args, 'census'], env);
    const rotated = run(args, env);
    const verify = run([...args, 'verify'], env);
    for (const r of [dry, census, rotated, verify]) {
      assert.equal(r.status, 0, `${mode}: ${r.stderr}`);
      assert.match(summary(r), new RegExp(`mode=${mode}`));
      assertNoKeys(r);
    }
    results[mode] = [dry, census, rotated, verify].map((r) => r.stdout.replace(/ mode=\w+/g, ''));
    assert.deepEqual(openAll(DB, NEW, { table }), new Map([...plain, ['current', '{"token":"current"}'], ['older', '{"token":"older"}']]));
  }
  assert.deepEqual(results.extension, results.client);
  assert.equal(line({ stdout: results.client[2] }), `scanned=${plain.size + 3} updated=${plain.size + 1} already_current=1 empty=1`);
});

test('a stranger-key row: both modes refuse naming the same row, and nothing changes', () => {
  twins();
  addRow(DB, 'stranger', STRANGER, { table: 't_ext' });
  addRow(DB, 'stranger', STRANGER, { table: 't_client' });
  const errors = {};
  for (const [mode, table] of [['extension', 't_ext'], ['client', 't_client']]) {
    const before = snapshot(DB, { table });
    const r = run(['--mode', mode, '--table', table], rotateEnv(DB));
    assert.equal(r.status, 1, r.stderr);
    assert.equal(snapshot(DB, { table }), before);
    errors[mode] = r.stderr.match(/cannot re-encrypt row (.*?) of public\.t_\w+: ([^(]*)/).slice(1);
  }
  assert.deepEqual(errors.extension, errors.client);
  assert.equal(errors.client[0], '(id)=(older)');
});

test('auto picks the extension where it is executable, client mode where it is not', () => {
  twins();
  const auto = run(['--table', 't_ext', '--dry-run'], rotateEnv(DB, `${OLD},${OTHER}`));
  assert.equal(auto.status, 0, auto.stderr);
  assert.match(summary(auto), /mode=extension dry_run=true$/);
  assert.match(auto.stderr, /mode=extension: credential_rotate \d+\.\d+\.\d+/);
  // A table owner that is no superuser: the extension's rotation is not executable by it
  // (tests/cli_tls.sh shows such a role cannot create the extension either).
  psql(`DROP ROLE IF EXISTS cli_owner; CREATE ROLE cli_owner LOGIN;
        ALTER TABLE t_client OWNER TO cli_owner`, { db: DB });
  assert.equal(psql(`SELECT has_function_privilege('cli_owner',
                       'credential_reencrypt(text, text, text, text, boolean, boolean)', 'EXECUTE')`, { db: DB }).trim(), 'f');
  const owner = run(['--table', 't_client'], rotateEnv(DB, `${OLD},${OTHER}`, NEW, 'cli_owner'));
  assert.equal(owner.status, 0, owner.stderr);
  assert.match(owner.stderr, /mode=client \(credential_reencrypt\(\) of credential_rotate \S+ is missing or not executable by this role\)/);
  assert.match(summary(owner), /updated=41 already_current=1 empty=1 mode=client$/);
  const forced = run(['--table', 't_client', '--mode', 'extension'], rotateEnv(DB, NEW, OLD, 'cli_owner'));
  assert.equal(forced.status, 1);
  assert.match(forced.stderr, /--mode extension: credential_reencrypt\(\) of credential_rotate \S+ is missing or not executable/);
  psql('DROP TABLE t_client; DROP ROLE cli_owner', { db: DB });
});

test('with every statement logged, no key reaches the server log in either mode', () => {
  twins();
  const log = process.env.CLUSTER_LOG;
  assert.ok(log, 'CLUSTER_LOG names the server log');
  const from = readFileSync(log).length;
  psql("ALTER SYSTEM SET log_statement = 'all'; SELECT pg_reload_conf()", { db: DB });
  try {
    for (const [mode, table] of [['extension', 't_ext'], ['client', 't_client']]) {
      const r = run(['--mode', mode, '--table', table], rotateEnv(DB, `${OLD},${OTHER}`));
      assert.equal(r.status, 0, r.stderr);
      const f = run(['--mode', mode, '--table', table], rotateEnv(DB, STRANGER, OTHER));
      assert.equal(f.status, 1, f.stderr);
    }
  } finally {
    psql('ALTER SYSTEM RESET log_statement; SELECT pg_reload_conf()', { db: DB });
  }
  const text = readFileSync(log).subarray(from).toString();
  assert.match(text, /credential_reencrypt\(\$1::pg_catalog\.text\[\]/);
  assert.match(text, /UPDATE public\.t_client AS t/);
  for (const k of [OLD, NEW, OTHER, STRANGER]) assert.ok(!text.includes(k), 'a key reached the server log');
});

test('the program names keys by the extension\'s own fingerprints', () => {
  twins();
  const r = run(['--table', 't_client', '--mode', 'client', '--dry-run', '--json'], rotateEnv(DB, `${OLD},${OTHER}`));
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  const fp = (k) => psql(`SELECT credential_key_fingerprint(${sqlLiteral(k)})`, { db: DB }).trim();
  assert.deepEqual(j.old_key_fingerprints, [fp(OLD), fp(OTHER)]);
  assert.equal(j.new_key_fingerprint, fp(NEW));
  assert.match(r.stderr, new RegExp(`old key fingerprint\\(s\\) ${fp(OLD)}, ${fp(OTHER)}; new key fingerprint ${fp(NEW)}`));
});
