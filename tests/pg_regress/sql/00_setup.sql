-- The extension, and the table as Freeboard's migrations create it.
CREATE EXTENSION credential_rotate;
CREATE TABLE credential_profiles (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  description TEXT NOT NULL DEFAULT '',
  type TEXT NOT NULL DEFAULT 'none' CHECK (type IN ('none', 'header', 'bearer', 'basic')),
  allow_public_use BOOLEAN NOT NULL DEFAULT FALSE,
  metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
  secret JSONB NOT NULL DEFAULT '{}'::jsonb,
  created_by TEXT, updated_by TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
-- What the extension installs: only the internal helpers, which do nothing on their own, are
-- executable by PUBLIC.
SELECT p.oid::regprocedure AS function,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_can_execute
  FROM pg_proc p
  JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'credential_rotate'
 ORDER BY p.oid::regprocedure::text COLLATE "C";
