-- Browser sessions of the settings pages, kept here when several replicas share the
-- database (FOREMAN_DATABASE_URL), so that a sign-in on one opens pages on every other.
-- With SQLite they stay in memory only and this table stays empty. No key, no user name:
-- the session's token and the key it signed in with, both as SHA-256 (hex).
CREATE TABLE sessions (
    token_hash    TEXT PRIMARY KEY,
    key_hash      TEXT NOT NULL,
    csrf          TEXT NOT NULL,
    created_at    REAL NOT NULL                        -- Unix seconds
);
