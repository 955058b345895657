// credential-rotate in client mode against a database WITHOUT the extension: the keys stay in
// the program, the server sees ciphertext only. Rows sealed by the application's node:crypto
// rotate and open in Node; every refusal exits non-zero, names its cause, and changes nothing.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  OLD, NEW, OTHER, STRANGER, run, rotateEnv, urlFor, freshDb, seedTable, addRow, snapshot,
  openAll, assertNoKeys, summary, psql,
} from './lib.mjs';

const DB = 'credential_rotate_cli';

before(() => {
  freshDb(DB);
});

function table(name, opts = {}) {
  psql(`DROP TABLE IF EXISTS ${name}`, { db: DB });
  return seedTable(DB, { table: name, ...opts });
}

test('usage and configuration errors exit 2 before connecting, naming the cause, never a key', () => {
  const noUrl = run([], { CREDENTIAL_ENCRYPTION_KEY_OLD: OLD, CREDENTIAL_ENCRYPTION_KEY_NEW: NEW });
  assert.equal(noUrl.status, 2);
  assert.match(noUrl.stderr, /DATABASE_URL \(or FREEBOARD_POSTGRES_URL\) is not set/);
  const noNew = run([], { DATABASE_URL: urlFor(DB), CREDENTIAL_ENCRYPTION_KEY_OLD: OLD });
  assert.equal(noNew.status, 2);
  assert.match(noNew.stderr, /CREDENTIAL_ENCRYPTION_KEY_NEW/);
  const bad = run([], rotateEnv(DB, `${OLD},${NEW.slice(0, 30)}`, OTHER));
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /CREDENTIAL_ENCRYPTION_KEY_OLD\[2\] is not a valid key/);
  const same = run([], rotateEnv(DB, OLD, ` ${OLD}\n`));
  assert.equal(same.status, 2);
  assert.match(same.stderr, /the old and the new key are the same key/);
  // Keys are never command-line arguments.
  const arg = run(['--old-key', OLD], rotateEnv(DB));
  assert.equal(arg.status, 2);
  const file = run(['--old-key-file', '/nonexistent/old.key'], rotateEnv(DB));
  assert.equal(file.status, 2);
  assert.match(file.stderr, /cannot read the key file \/nonexistent\/old\.key/);
  const url = run([], { ...rotateEnv(DB), DATABASE_URL: `${urlFor(DB)}&sslmode=verify` });
  assert.equal(url.status, 2);
  assert.match(url.stderr, /sslmode "verify" is not one of/);
  for (const r of [noUrl, noNew, bad, same, arg, file, url]) assertNoKeys(r);
});

for (const type of ['jsonb', 'json', 'text']) {
  test(`a ${type} column: Node-sealed rows rotate, open in Node with the new key, and a re-run finds them current`, () => {
    const name = `profiles_${type}`;
    const plain = table(name, { type, column: 'sealed', extra: { note: 'kept' }, rawExtra: '"num":1e400' });
    const args = ['--table', name, '--column', 'sealed'];
    const r = run(args, rotateEnv(DB));
    assert.equal(r.status, 0, r.stderr);
    assert.equal(summary(r), `scanned=${plain.size + 1} updated=${plain.size} already_current=0 empty=1 mode=client`);
    assertNoKeys(r);
    assert.deepEqual(openAll(DB, NEW, { table: name, column: 'sealed' }), plain);
    // Every field but the three re-sealed ones is kept.
    const kept = psql(`SELECT count(*) FROM ${name}
                        WHERE sealed::text::jsonb->>'note' = 'kept' AND (sealed::text::jsonb->>'num')::numeric = 1e400`, { db: DB }).trim();
    assert.equal(kept, String(plain.size));
    const again = run(args, rotateEnv(DB));
    assert.equal(again.status, 0, again.stderr);
    assert.equal(summary(again), `scanned=${plain.size + 1} updated=0 already_current=${plain.size} empty=1 mode=client`);
  });
}

test('quoted names: a schema and table whose names need quoting, given as SQL names them', () => {
  psql('DROP SCHEMA IF EXISTS "Odd Schema" CASCADE; CREATE SCHEMA "Odd Schema"', { db: DB });
  const plain = table('"Odd Schema"."cred; table"', { column: '"my secret"' });
  const r = run(['--table', '"Odd Schema"."cred; table"', '--column', 'my secret'], rotateEnv(DB));
  assert.equal(r.status, 0, r.stderr);
  assert.equal(summary(r), `scanned=${plain.size + 1} updated=${plain.size} already_current=0 empty=1 mode=client`);
  assert.deepEqual(openAll(DB, NEW, { table: '"Odd Schema"."cred; table"', column: '"my secret"' }), plain);
});

test('a row sealed with a stranger key refuses with its id; the table is unchanged', () => {
  table('credential_profiles', { rows: 30 });
  addRow(DB, 'stranger-1', STRANGER);
  const before = snapshot(DB);
  const r = run([], rotateEnv(DB));
  assert.equal(r.status, 1);
  assert.match(r.stderr, /cannot re-encrypt row \(id\)=\(stranger-1\) of public\.credential_profiles: the envelope does not open with old_key or new_key/);
  assert.equal(r.stdout, '');
  assertNoKeys(r);
  assert.equal(snapshot(DB), before);
});

test('dry run, verify and census count right and change nothing', () => {
  const plain = table('credential_profiles', { rows: 12 });
  addRow(DB, 'under-new', NEW);
  addRow(DB, 'under-other', OTHER);
  psql(`INSERT INTO credential_profiles VALUES ('bad', '{"algorithm":"aes-256-gcm","iv":"x"}')`, { db: DB });
  const before = snapshot(DB);
  const census = run(['census', '--json'], { DATABASE_URL: urlFor(DB), CREDENTIAL_ENCRYPTION_KEY_OLD: OLD, CREDENTIAL_ENCRYPTION_KEY_NEW: NEW });
  assert.equal(census.status, 0, census.stderr);
  const c = JSON.parse(census.stdout);
  assert.deepEqual(c.keys.map((k) => k.readable), [plain.size, 1]);
  assert.deepEqual([c.not_readable, c.empty, c.malformed, c.mode], [1, 1, 1, 'client']);
  const verify = run(['verify'], { DATABASE_URL: urlFor(DB), CREDENTIAL_ENCRYPTION_KEY: OLD });
  assert.equal(verify.status, 1);
  assert.equal(summary(verify), `readable=${plain.size} not_readable=2 empty=1 malformed=1 mode=client`);
  assert.equal(snapshot(DB), before);
  psql("DELETE FROM credential_profiles WHERE id IN ('bad', 'under-other')", { db: DB });
  const remaining = snapshot(DB);
  const dry = run(['--dry-run'], rotateEnv(DB));
  assert.equal(dry.status, 0, dry.stderr);
  assert.equal(summary(dry), `scanned=${plain.size + 2} updated=${plain.size} already_current=1 empty=1 mode=client dry_run=true`);
  assert.equal(snapshot(DB), remaining);
  const rotated = run([], rotateEnv(DB));
  assert.equal(rotated.status, 0, rotated.stderr);
  const ok = run(['verify'], { DATABASE_URL: urlFor(DB), CREDENTIAL_ENCRYPTION_KEY_NEW: NEW });
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(summary(ok), `readable=${plain.size + 1} not_readable=0 empty=1 malformed=0 mode=client`);
  for (const r of [census, verify, dry, rotated, ok]) assertNoKeys(r);
});

test('several old keys, comma-separated, and keys from files', () => {
  const plain = table('credential_profiles', { rows: 10 });
  addRow(DB, 'older', OTHER);
  const dir = mkdtempSync(join(tmpdir(), 'cli-keys-'));
  writeFileSync(join(dir, 'old'), `${OLD}\n`);
  writeFileSync(join(dir, 'older'), `  ${OTHER}  `);
  writeFileSync(join(dir, 'new'), NEW);
  const r = run(['--old-key-file', join(dir, 'old'), '--old-key-file', join(dir, 'older'), '--new-key-file', join(dir, 'new'), '--json'],
    { DATABASE_URL: urlFor(DB) });
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.deepEqual([j.scanned, j.updated, j.already_current, j.empty], [plain.size + 2, plain.size + 1, 0, 1]);
  assert.deepEqual(j.opened_by, [plain.size, 1]);
  assert.equal(j.new_key_fingerprint, '9759add3a02dea8f');
  assert.equal(j.old_key_fingerprints[0], '8d3197a7dd0e26e7');
  const opened = openAll(DB, NEW);
  assert.equal(opened.size, plain.size + 1);
  // The environment's form: CREDENTIAL_ENCRYPTION_KEY_OLD=<old>,<older> (rotating back).
  const back = run([], rotateEnv(DB, `${NEW}, ${STRANGER}`, OLD));
  assert.equal(back.status, 0, back.stderr);
  assert.match(summary(back), /updated=11 already_current=0/);
  assertNoKeys(r);
});

test('row-level security active for the role is refused; nothing changes', () => {
  table('credential_profiles', { rows: 5 });
  psql(`ALTER TABLE credential_profiles ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
        CREATE POLICY hide_r1 ON credential_profiles USING (id <> 'r1');
        DROP ROLE IF EXISTS cli_rls; CREATE ROLE cli_rls LOGIN;
        ALTER TABLE credential_profiles OWNER TO cli_rls`, { db: DB });
  const before = snapshot(DB);
  for (const args of [[], ['--dry-run'], ['verify'], ['census']]) {
    const r = run(args, { ...rotateEnv(DB, OLD, NEW, 'cli_rls'), CREDENTIAL_ENCRYPTION_KEY: OLD });
    assert.equal(r.status, 1, args.join(' '));
    assert.match(r.stderr, /row-level security is active on public\.credential_profiles/);
  }
  assert.equal(snapshot(DB), before);
  psql('DROP TABLE credential_profiles; DROP ROLE cli_rls', { db: DB });
});

test('a trigger that keeps the old secret, skips a row or rewrites it afterwards fails the run; nothing changes', () => {
  const cases = {
    keep: `CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.id = 'r3' THEN NEW.secret := OLD.secret; END IF; RETURN NEW; END $$;
           CREATE TRIGGER t BEFORE UPDATE ON credential_profiles FOR EACH ROW EXECUTE FUNCTION keep()`,
    skip: `CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.id = 'r3' THEN RETURN NULL; END IF; RETURN NEW; END $$;
           CREATE TRIGGER t BEFORE UPDATE ON credential_profiles FOR EACH ROW EXECUTE FUNCTION keep()`,
    after: `CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.id = 'r3' AND pg_trigger_depth() = 1 THEN
               UPDATE credential_profiles SET secret = OLD.secret WHERE id = 'r3'; END IF; RETURN NULL; END $$;
           CREATE TRIGGER t AFTER UPDATE ON credential_profiles FOR EACH ROW EXECUTE FUNCTION keep()`,
  };
  const expected = {
    keep: /verification before COMMIT: 1 of the 8 rows re-sealed in public\.credential_profiles do not hold what was written/,
    skip: /a trigger or rule on public\.credential_profiles skipped 1 of the 8 rows to re-encrypt/,
    after: /verification before COMMIT: 1 of the 8 rows re-sealed in public\.credential_profiles do not hold what was written/,
  };
  for (const [name, ddl] of Object.entries(cases)) {
    psql('DROP TABLE IF EXISTS credential_profiles; DROP FUNCTION IF EXISTS keep()', { db: DB });
    seedTable(DB, { rows: 8 });
    psql(ddl, { db: DB });
    const before = snapshot(DB);
    const r = run([], rotateEnv(DB));
    assert.equal(r.status, 1, `${name}: ${r.stderr}`);
    assert.match(r.stderr, expected[name], name);
    assert.equal(snapshot(DB), before, name);
  }
  psql('DROP TABLE credential_profiles; DROP FUNCTION keep()', { db: DB });
});

test('--mode extension without the extension exits 1 and says why', () => {
  table('credential_profiles', { rows: 2 });
  const r = run(['--mode', 'extension'], rotateEnv(DB));
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--mode extension: the extension credential_rotate is not installed in this database/);
});

test('objects planted by another role are never called: every name in the SQL is qualified', () => {
  // A role that may create in public, and a search_path that puts public before pg_catalog:
  // any unqualified =, ||, unnest, to_regclass or row_security_active would resolve to these.
  psql(`DROP TABLE IF EXISTS credential_profiles;
        DROP SCHEMA IF EXISTS planted CASCADE; CREATE SCHEMA planted;
        CREATE FUNCTION planted.trap_tid(tid, tid) RETURNS boolean LANGUAGE plpgsql AS
          $$ BEGIN RAISE EXCEPTION 'planted operator called'; END $$;
        CREATE FUNCTION planted.trap_oid(oid, oid) RETURNS boolean LANGUAGE plpgsql AS
          $$ BEGIN RAISE EXCEPTION 'planted operator called'; END $$;
        CREATE FUNCTION planted.trap_jsonb(jsonb, jsonb) RETURNS boolean LANGUAGE plpgsql AS
          $$ BEGIN RAISE EXCEPTION 'planted operator called'; END $$;
        CREATE FUNCTION planted.trap_text(text, text) RETURNS text LANGUAGE plpgsql AS
          $$ BEGIN RAISE EXCEPTION 'planted operator called'; END $$;
        CREATE OPERATOR planted.= (LEFTARG = tid, RIGHTARG = tid, FUNCTION = planted.trap_tid);
        CREATE OPERATOR planted.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = planted.trap_oid);
        CREATE OPERATOR planted.= (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = planted.trap_jsonb);
        CREATE OPERATOR planted.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = planted.trap_text);
        CREATE FUNCTION planted.unnest(anyarray) RETURNS SETOF anyelement LANGUAGE plpgsql AS
          $$ BEGIN RAISE EXCEPTION 'planted unnest called'; END $$;
        CREATE FUNCTION planted.to_regclass(text) RETURNS regclass LANGUAGE plpgsql AS
          $$ BEGIN RAISE EXCEPTION 'planted to_regclass called'; END $$;
        CREATE FUNCTION planted.row_security_active(oid) RETURNS boolean LANGUAGE plpgsql AS
          $$ BEGIN RAISE EXCEPTION 'planted row_security_active called'; END $$;
        DROP ROLE IF EXISTS cli_planted; CREATE ROLE cli_planted LOGIN;
        GRANT USAGE ON SCHEMA planted TO cli_planted;
        ALTER ROLE cli_planted SET search_path = planted, pg_catalog, public`, { db: DB });
  // The traps are live: unqualified, they win over pg_catalog's.
  for (const sql of ["SELECT 1::oid = 1::oid", "SELECT '(0,1)'::tid = '(0,1)'::tid", "SELECT 'a'::text || 'b'::text"]) {
    assert.throws(() => psql(`SET search_path = planted, pg_catalog; ${sql}`, { db: DB }), /planted operator called/);
  }
  const plain = seedTable(DB, { rows: 6 });
  psql('ALTER TABLE credential_profiles OWNER TO cli_planted', { db: DB });
  const env = rotateEnv(DB, OLD, NEW, 'cli_planted');
  const r = run(['--table', 'public.credential_profiles'], env);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(summary(r), `scanned=${plain.size + 1} updated=${plain.size} already_current=0 empty=1 mode=client`);
  for (const args of [['verify'], ['census'], ['--dry-run']]) {
    const v = run([...args, '--table', 'public.credential_profiles'], { ...env, CREDENTIAL_ENCRYPTION_KEY: NEW });
    assert.equal(v.status, 0, `${args}: ${v.stderr}`);
  }
  psql('DROP TABLE credential_profiles; DROP SCHEMA planted CASCADE; DROP ROLE cli_planted', { db: DB });
});
