//! `#[pg_test]`s of the SQL surface. Each test works on its own table so that tests can run
//! in any order; errors are caught in a subtransaction (`try_sql`) so that a test can check
//! the SQLSTATE, the message and that nothing changed.

mod support;

mod jsonb;
mod keys;
mod privileges;
mod rotation;
mod several_keys;
mod state;
mod verify;
