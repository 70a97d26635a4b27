-- Jobs submitted through /jobs, their artifacts and their webhook deliveries.
CREATE TABLE jobs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of submission; the list cursor
    id            TEXT NOT NULL UNIQUE,
    endpoint      TEXT NOT NULL CHECK (endpoint IN ('chat', 'generate', 'embed')),
    request       BLOB NOT NULL,                      -- the Ollama request body, as sent
    model         TEXT,
    priority      TEXT NOT NULL CHECK (priority IN ('interactive', 'batch')),
    state         TEXT NOT NULL
                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,                      -- Unix seconds
    started_at    REAL,
    finished_at   REAL,
    error         TEXT,
    metadata      TEXT NOT NULL DEFAULT '{}',         -- JSON
    webhook_url   TEXT,
    base_url      TEXT NOT NULL DEFAULT ''             -- foreman's URL as the submitter saw it
);
CREATE INDEX jobs_queue ON jobs (state, priority, seq);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE artifacts (
    job_id        TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    size          INTEGER NOT NULL,
    path          TEXT NOT NULL,                      -- relative to the data directory
    PRIMARY KEY (job_id, name)
);

CREATE TABLE deliveries (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id        TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    url           TEXT NOT NULL,
    body          BLOB NOT NULL,                      -- the JSON posted, byte for byte
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       REAL NOT NULL,                      -- Unix seconds
    delivered_at  REAL,
    last_status   INTEGER                             -- HTTP status, or NULL (no answer)
);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE delivered_at IS NULL;
CREATE INDEX deliveries_job ON deliveries (job_id);
