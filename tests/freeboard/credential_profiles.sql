-- Freeboard's credential_profiles table, exactly as the application's migrations create it.
-- Shared by the demo, the benchmark and the tests.
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
