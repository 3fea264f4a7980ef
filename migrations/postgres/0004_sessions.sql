-- Dashboard logins: users can be disabled (their sessions end, their audit history stays),
-- sessions remember the address they were opened from. The sessions table itself is in 0001
-- (id_hash = SHA-256 of the cookie's secret, csrf_token = SHA-256 of the CSRF token).
-- Expand-only.
ALTER TABLE users ADD COLUMN disabled_at TIMESTAMPTZ;
ALTER TABLE sessions ADD COLUMN remote_addr TEXT;
CREATE INDEX sessions_expires_idx ON sessions (expires_at);
