-- The cross-replica gate's waiting line (docs/adr/0021-one-gate-across-replicas.md). Used on
-- PostgreSQL only (with SQLite one process owns the gate in memory): one row per chat or job
-- waiting for an Ollama server's slot, tied to the database session of the replica that
-- waits, so that a replica's death drops its places (the session ends with the process).
CREATE TABLE gate_tickets (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,   -- order of arrival, cluster-wide
    gate          TEXT NOT NULL,                       -- the Ollama server (its URL, lower case)
    lane          TEXT NOT NULL CHECK (lane IN ('interactive', 'batch')),
    replica       TEXT NOT NULL,                       -- for people: which replica waits
    pid           INTEGER NOT NULL,                    -- that replica's listening session:
    since         REAL NOT NULL                        --   pg_backend_pid() and its start
);
CREATE INDEX gate_tickets_line ON gate_tickets (gate, lane, seq);
