-- Series ids are never reused. Without AUTOINCREMENT SQLite hands out the highest deleted id
-- again, so a reading still on its way for a deleted device (the batch writer caches series
-- ids) could land in another device's series. Expand-only: same table, same columns, so the
-- previous release keeps working. Nothing references `series`, so rebuilding it is safe.
CREATE TABLE series_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    metric      TEXT NOT NULL,
    unit        TEXT,
    UNIQUE (device_id, metric)
);
INSERT INTO series_new (id, device_id, metric, unit)
SELECT id, device_id, metric, unit FROM series ORDER BY id;
DROP TABLE series;
ALTER TABLE series_new RENAME TO series;

-- New ids start past every id ever used, including ids that only rows left behind by a
-- deleted series still carry.
INSERT INTO sqlite_sequence (name, seq)
SELECT 'series', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'series');
UPDATE sqlite_sequence SET seq = max(
    seq,
    coalesce((SELECT max(id) FROM series), 0),
    coalesce((SELECT max(series_id) FROM readings), 0),
    coalesce((SELECT max(series_id) FROM readings_1m), 0),
    coalesce((SELECT max(series_id) FROM readings_1h), 0)
) WHERE name = 'series';
