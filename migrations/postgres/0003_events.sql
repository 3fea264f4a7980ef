-- The live event log behind GET /api/stream: every instance appends its events here and tails
-- the table, so ids are global and a client resumes with Last-Event-ID on any instance (blue or
-- green during a deploy) without missing events. Rows are pruned after a short retention.
-- Appends hold a transaction-level advisory lock, so ids become visible in id order and a
-- tailer reading "id > last" never skips a row that commits later. Expand-only.
CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    kind        TEXT NOT NULL,
    data        JSONB NOT NULL
);
CREATE INDEX events_created_at_idx ON events (created_at);
