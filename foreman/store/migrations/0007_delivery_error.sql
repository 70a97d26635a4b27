-- Why a webhook delivery's last attempt failed, when no HTTP status says it (a refused
-- connection, a URL the sender cannot use), so that a failing delivery is recorded on
-- its own row and never stops the sender.
ALTER TABLE deliveries ADD COLUMN last_error TEXT;
