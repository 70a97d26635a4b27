-- Users: each one an API key with a role. Only the key's SHA-256 is stored.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    key_hash      TEXT NOT NULL UNIQUE,                -- hex SHA-256 of the key
    key_prefix    TEXT NOT NULL,                       -- its first characters, to recognise it
    created_at    REAL NOT NULL,                       -- Unix seconds
    revoked_at    REAL                                 -- set: the key no longer works
);
