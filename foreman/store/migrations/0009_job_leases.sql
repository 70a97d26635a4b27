-- Jobs across replicas (FOREMAN_DATABASE_URL, docs/adr/0021-one-gate-across-replicas.md):
-- the replica running a job and until when its lease holds. A replica renews the leases
-- of the jobs it runs while it lives; another takes over a running job whose lease ran
-- out. On a shared database an artifact is kept in its row (content) rather than as a
-- file in one replica's data directory (then path is '').
ALTER TABLE jobs ADD COLUMN runner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until REAL;
ALTER TABLE artifacts ADD COLUMN content BLOB;
