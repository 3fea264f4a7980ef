-- The live event log behind GET /api/stream (see the PostgreSQL migration). AUTOINCREMENT:
-- ids are never reused after pruning, so a stale Last-Event-ID cannot match a newer event.
-- created_at is microseconds since the Unix epoch. Expand-only.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at  INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX events_created_at_idx ON events (created_at);
