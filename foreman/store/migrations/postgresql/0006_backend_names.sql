-- PostgreSQL's version of ../0006_backend_names.sql (backend names unique per owner). SQLite
-- rebuilds the table to drop the old UNIQUE; PostgreSQL drops the constraint itself, which
-- keeps the foreign keys of backend_models and preferences and the identity's sequence.
ALTER TABLE backends DROP CONSTRAINT backends_name_key;
CREATE UNIQUE INDEX backends_owner_name ON backends (COALESCE(owner, ''), name);
CREATE INDEX backends_owner ON backends (owner);
