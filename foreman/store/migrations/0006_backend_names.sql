-- Backend names are unique per owner, not across foreman: a user's backend may share its
-- name with another user's (whose names they must never learn from an error); a shared
-- backend's name is unique among all. SQLite cannot drop the old UNIQUE: the table is
-- rebuilt (foreign keys are off while migrations run, so nothing cascades).
CREATE TABLE backends_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL,                       -- also the prefix of "name/model"
    type          TEXT NOT NULL CHECK (type IN ('ollama', 'anthropic', 'openai')),
    endpoint      TEXT,                                -- base URL; NULL: the API's default
    api_key       BLOB,                                -- Fernet token of the key, or NULL
    owner         TEXT,                                -- a user's name; NULL: shared
    is_default    INTEGER NOT NULL DEFAULT 0,          -- the shared default (one at most)
    is_active     INTEGER NOT NULL DEFAULT 1,
    builtin       INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,                       -- Unix seconds
    updated_at    REAL NOT NULL
);
INSERT INTO backends_new SELECT id, name, type, endpoint, api_key, owner, is_default,
    is_active, builtin, created_at, updated_at FROM backends;
DROP TABLE backends;
ALTER TABLE backends_new RENAME TO backends;
CREATE UNIQUE INDEX backends_owner_name ON backends (COALESCE(owner, ''), name);
CREATE INDEX backends_owner ON backends (owner);
