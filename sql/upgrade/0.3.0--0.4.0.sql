-- credential_rotate 0.3.0 -> 0.4.0
--
-- scripts/assemble-sql.sh writes sql/credential_rotate--0.3.0--0.4.0.sql from this file, each
-- "-- @include" line replaced by that file of sql/ as the install script has it: the routines
-- and descriptions it (re)creates have one source. tests/upgrade.sh requires the upgraded
-- catalog to equal a fresh install's.
--
-- The library does most of 0.4.0 (a fixed search_path and qualified operators in every
-- statement it runs, functions of other roles refused during a call, every written row
-- checked as stored); the catalog changes are here:
-- - credential_reencrypt_batched counts each batch's rows under the table lock instead of
--   trusting planner statistics, refuses to start inside a transaction block (25001), and has
--   one loop for both forms: the internal procedure _credential_reencrypt_batched with the
--   library's _credential_batched_start and _credential_reencrypt_batch, which replace
--   _credential_reencrypt_blocks and the array form of _credential_check_keys;
-- - the internal helpers move to the schema credential_rotate, out of users' way; the entry
--   points and the audit table stay where they are;
-- - every statement of the scripts names its operators (pg_catalog.) and compares one type.
\echo Use "ALTER EXTENSION credential_rotate UPDATE TO '0.4.0'" to load this file. \quit

DROP FUNCTION @extschema@._credential_reencrypt_blocks(text, text, text, text, bigint, bigint);
DROP FUNCTION @extschema@._credential_reencrypt_blocks(text[], text, text, text, bigint, bigint);
DROP FUNCTION @extschema@._credential_check_keys(text[], text);

CREATE SCHEMA IF NOT EXISTS credential_rotate;
ALTER FUNCTION @extschema@._credential_audit_append() SET SCHEMA credential_rotate;
ALTER FUNCTION @extschema@._credential_check_keys(text, text) SET SCHEMA credential_rotate;
ALTER FUNCTION @extschema@._credential_reencrypt_row(oid, tid, text) SET SCHEMA credential_rotate;
ALTER FUNCTION @extschema@._credential_reencrypt_row_jsonb(oid, tid, jsonb) SET SCHEMA credential_rotate;
ALTER FUNCTION @extschema@._credential_reencrypt_take(tid) SET SCHEMA credential_rotate;
ALTER FUNCTION @extschema@._credential_reencrypt_take_jsonb(tid, jsonb) SET SCHEMA credential_rotate;
ALTER FUNCTION @extschema@._credential_status(text) SET SCHEMA credential_rotate;
ALTER FUNCTION @extschema@._credential_status_jsonb(jsonb) SET SCHEMA credential_rotate;
ALTER FUNCTION @extschema@._credential_census_status(text) SET SCHEMA credential_rotate;
ALTER FUNCTION @extschema@._credential_census_status_jsonb(jsonb) SET SCHEMA credential_rotate;

CREATE FUNCTION credential_rotate."_credential_batched_start"(
	"old_keys" text[],
	"new_key" text,
	"batch_rows" INT
) RETURNS bigint[]
VOLATILE SECURITY INVOKER PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_credential_batched_start_wrapper';

CREATE FUNCTION credential_rotate."_credential_reencrypt_batch"(
	"old_keys" text[],
	"new_key" text,
	"target_table" text,
	"secret_column" text,
	"batch_rows" INT,
	"resume" tid,
	"state" bigint[]
) RETURNS TABLE (
	"resume" tid,
	"state" bigint[]
)
VOLATILE SECURITY INVOKER PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_credential_reencrypt_batch_wrapper';

-- @include batched.sql
-- @include descriptions.sql
-- @include finalize.sql
