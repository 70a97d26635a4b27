-- The queue's lookups (the next job of a kind, a job's position) by index alone:
-- kind (endpoint), then lane (priority), then order of submission.
CREATE INDEX jobs_lane ON jobs (state, endpoint, priority, seq);
