-- SQLite's 0007 makes series ids never reused (AUTOINCREMENT). PostgreSQL's come from a
-- sequence, which never hands an id out twice; this records why the batch writer may cache them.
COMMENT ON COLUMN series.id IS 'from a sequence, never reused: the ingest batch writer caches series ids';
