-- Jobs belong to the key that submitted them: a user sees only their own, an admin all.
-- Jobs stored before this migration have no owner: only admins see them.
ALTER TABLE jobs ADD COLUMN owner TEXT;                          -- the user's name
ALTER TABLE jobs ADD COLUMN owner_is_admin INTEGER NOT NULL DEFAULT 1;
CREATE INDEX jobs_owner ON jobs (owner, seq);
-- 1: the delivery goes through the outbound address policy (an ordinary user's webhook).
ALTER TABLE deliveries ADD COLUMN policed INTEGER NOT NULL DEFAULT 0;
