-- Backends: the upstream LLM servers foreman routes to. The one named by
-- FOREMAN_OLLAMA_URL is the row with builtin = 1 (its endpoint is rewritten at every
-- start, its key is FOREMAN_OLLAMA_TOKEN and never stored).
CREATE TABLE backends (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,                -- also the prefix of "name/model"
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

-- Models discovered on each backend. A model that disappears keeps its row.
CREATE TABLE backend_models (
    backend_id    INTEGER NOT NULL REFERENCES backends (id) ON DELETE CASCADE,
    model_name    TEXT NOT NULL,
    size_bytes    INTEGER,                             -- NULL: the API does not say
    is_selected   INTEGER NOT NULL DEFAULT 0,          -- one per backend at most
    last_seen_at  REAL NOT NULL,
    PRIMARY KEY (backend_id, model_name)
);

-- Each user's preferences, by user name ("admin" for FOREMAN_TOKEN).
CREATE TABLE preferences (
    user_name           TEXT PRIMARY KEY,
    default_backend_id  INTEGER REFERENCES backends (id) ON DELETE SET NULL,
    fallback_to_claude  INTEGER,                       -- NULL: on when a Claude backend exists
    aliases             TEXT NOT NULL DEFAULT '{}'     -- JSON {"alias": "backend/model" | "model"}
);
