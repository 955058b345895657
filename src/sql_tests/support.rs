//! What the `#[pg_test]`s share: the test keys, running SQL, catching an error with its
//! SQLSTATE, Freeboard's table and its rows, and the counts of a call.

use pgrx::prelude::*;

pub(crate) const KEY_A: &str = "y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q=";

pub(crate) const KEY_B: &str = "PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc=";

pub(crate) const KEY_C: &str = "6fYx3zeZFQ1n6rJbJdX6bHvZ9kD0n2o8o5H1lY0GkQ4=";

pub(crate) const VECTORS: &str = include_str!("../../tests/vectors/envelopes.json");

pub(crate) fn run(sql: &str) {
    Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub(crate) fn one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
    Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs `sql` in a subtransaction; returns `SQLSTATE: message` if it failed.
/// Created once per session, so that it also works after a test's `SET ROLE`.
pub(crate) fn try_sql(sql: &str) -> Option<String> {
    run("DO $do$ BEGIN
           IF pg_catalog.to_regprocedure('pg_temp.try_sql(text)') IS NULL THEN
             CREATE FUNCTION pg_temp.try_sql(q text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE q; RETURN NULL;
             EXCEPTION WHEN others THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
           END IF;
         END $do$");
    one::<String>(&format!("SELECT pg_temp.try_sql({})", quote(sql)))
}

pub(crate) fn expect_error(sql: &str, sqlstate: &str, fragment: &str) -> String {
    let err = try_sql(sql).unwrap_or_else(|| panic!("expected an error from {sql}"));
    assert!(err.starts_with(sqlstate), "{sql}: got {err}");
    assert!(err.contains(fragment), "{sql}: got {err}");
    err
}

/// Freeboard's table, as its migrations create it, under another name.
pub(crate) fn create_profiles(table: &str) {
    run(
        &include_str!("../../tests/freeboard/credential_profiles.sql")
            .replace("TABLE credential_profiles", &format!("TABLE {table}")),
    );
}

/// Seeds `n` sealed rows under `key` plus `empty` rows holding the `{}` default.
pub(crate) fn seed(table: &str, n: i32, empty: i32, key: &str) {
    run(&format!(
        "INSERT INTO {table} (id, name, type, secret)
         SELECT 'p' || i, 'profile ' || i, 'bearer',
                credential_encrypt(jsonb_build_object('token', md5(i::text), 'n', i), {k})
           FROM generate_series(1, {n}) i",
        k = quote(key)
    ));
    run(&format!(
        "INSERT INTO {table} (id, name) SELECT 'e' || i, 'empty ' || i FROM generate_series(1, {empty}) i"
    ));
}

/// Every row's secret as text, in primary key order: what "nothing changed" compares.
pub(crate) fn snapshot(table: &str) -> String {
    one::<String>(&format!(
        "SELECT string_agg(id || '=' || secret::text, E'\\n' ORDER BY id) FROM {table}"
    ))
    .unwrap_or_default()
}

pub(crate) fn counts(sql: &str) -> (i64, i64, i64, i64) {
    Spi::connect(|c| {
        let row = c.select(sql, Some(1), &[])?.first();
        Ok::<_, pgrx::spi::Error>((
            row.get::<i64>(1)?.unwrap_or(-1),
            row.get::<i64>(2)?.unwrap_or(-1),
            row.get::<i64>(3)?.unwrap_or(-1),
            row.get::<i64>(4)?.unwrap_or(-1),
        ))
    })
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub(crate) fn reencrypt(old: &str, new: &str, extra: &str) -> (i64, i64, i64, i64) {
    counts(&format!(
        "SELECT * FROM credential_reencrypt({}, {}{extra})",
        quote(old),
        quote(new)
    ))
}

pub(crate) fn verify(key: &str, extra: &str) -> (i64, i64, i64, i64) {
    counts(&format!(
        "SELECT * FROM credential_verify({}{extra})",
        quote(key)
    ))
}

/// The helpers PUBLIC may execute; everything else needs a grant.
pub(crate) const PUBLIC_HELPERS: [&str; 13] = [
    "credential_rotate._credential_audit_append()",
    "credential_rotate._credential_batched_start(text[],text,integer)",
    "credential_rotate._credential_census_status(text)",
    "credential_rotate._credential_census_status_jsonb(jsonb)",
    "credential_rotate._credential_check_keys(text,text)",
    "credential_rotate._credential_reencrypt_batch(text[],text,text,text,integer,tid,bigint[])",
    "credential_rotate._credential_reencrypt_batched(text[],text,integer,text,text)",
    "credential_rotate._credential_reencrypt_row(oid,tid,text)",
    "credential_rotate._credential_reencrypt_row_jsonb(oid,tid,jsonb)",
    "credential_rotate._credential_reencrypt_take(tid)",
    "credential_rotate._credential_reencrypt_take_jsonb(tid,jsonb)",
    "credential_rotate._credential_status(text)",
    "credential_rotate._credential_status_jsonb(jsonb)",
];

/// One call of the batch helper of `credential_reencrypt_batched`, from `old` to `new`, with
/// a fresh state for one old key; `resume` is a tid literal or NULL for the final pass.
/// Its counts: scanned, updated, already current, empty.
pub(crate) fn batch_call(old: &str, new: &str, table: &str, resume: &str) -> String {
    format!(
        "SELECT state[2], state[3], state[4], state[5]
           FROM credential_rotate._credential_reencrypt_batch(ARRAY[{}], {}, '{table}', 'secret', 1000, {resume},
                                            '{{0,0,0,0,0,16,-1,0}}')",
        quote(old),
        quote(new)
    )
}

/// A table with row-level security whose policy shows `viewer` only the rows with an even
/// number: half of them.
pub(crate) fn create_rls_table(table: &str) {
    create_profiles(table);
    seed(table, 10, 2, KEY_A);
    run(&format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"));
    run(&format!(
        "CREATE POLICY half ON {table} USING (substr(id, 2)::int % 2 = 0)"
    ));
}

/// A table owned by another role (`app_owner_tc`), whose code records every statement it
/// runs in: the keys of a rotation would be in `captured`.
pub(crate) fn create_capturing_table(table: &str) {
    create_profiles(table);
    seed(table, 4, 0, KEY_A);
    run("CREATE TABLE IF NOT EXISTS captured (q text)");
    run("GRANT INSERT ON captured TO PUBLIC");
    run(&format!("ALTER TABLE {table} OWNER TO app_owner_tc"));
}

/// Rows the table's code wrote. (Here the client statement is the test itself, so it would
/// not hold the keys; tests/pg_regress/sql/08_table_code.sql shows what a client's
/// statement exposes.)
pub(crate) fn captured_rows() -> i64 {
    one::<i64>("SELECT count(*) FROM captured").unwrap_or(-1)
}

/// The rows of a census, as `fingerprint|status|rows` lines (`-` for no fingerprint).
pub(crate) fn census(keys: &[&str], extra: &str) -> String {
    let array = keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
    one::<String>(&format!(
        "SELECT string_agg(coalesce(key_fingerprint, '-') || '|' || status || '|' || rows,
                           E'\\n' ORDER BY n)
           FROM credential_key_census(ARRAY[{array}]{extra}) WITH ORDINALITY AS c(key_fingerprint, status, rows, n)"
    ))
    .unwrap_or_default()
}

pub(crate) fn fingerprint(key: &str) -> String {
    one::<String>(&format!(
        "SELECT credential_key_fingerprint({})",
        quote(key)
    ))
    .unwrap_or_default()
}

/// Seeds rows `<prefix>1..n` under `key`, interleaved with other seeds by the caller.
pub(crate) fn seed_under(table: &str, prefix: &str, n: i32, key: &str) {
    run(&format!(
        "INSERT INTO {table} (id, name, secret)
         SELECT '{prefix}' || i, '{prefix} ' || i,
                credential_encrypt(jsonb_build_object('token', '{prefix}' || i), {k})
           FROM generate_series(1, {n}) i",
        k = quote(key)
    ));
}
