// Minimal psql wrapper for the tests: connection settings come from PGHOST/PGPORT/PGUSER.
import { execFileSync } from 'node:child_process';

export function psql(sql, { db = process.env.PGDATABASE, vars = {} } = {}) {
  const args = ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-d', db];
  for (const [k, v] of Object.entries(vars)) args.push('-v', `${k}=${v}`);
  return execFileSync('psql', args, { input: sql, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
}

export function sqlLiteral(s) {
  return `'${String(s).replace(/'/g, "''")}'`;
}
