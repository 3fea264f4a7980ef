-- Rollups of readings per series: 1-minute and 1-hour buckets (bucket = start, microseconds
-- since the Unix epoch), kept up to date in the transaction that inserts readings (only
-- readings that were new count). avg = sum / count. See the PostgreSQL migration. Expand-only.
CREATE TABLE readings_1m (
    series_id   INTEGER NOT NULL,
    bucket      INTEGER NOT NULL,
    min         REAL NOT NULL,
    max         REAL NOT NULL,
    sum         REAL NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (series_id, bucket)
) WITHOUT ROWID;

CREATE TABLE readings_1h (
    series_id   INTEGER NOT NULL,
    bucket      INTEGER NOT NULL,
    min         REAL NOT NULL,
    max         REAL NOT NULL,
    sum         REAL NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (series_id, bucket)
) WITHOUT ROWID;

-- History stored before this migration.
INSERT INTO readings_1m (series_id, bucket, min, max, sum, count)
SELECT series_id, (ts / 60000000) * 60000000, min(value), max(value), sum(value), count(*)
FROM readings GROUP BY 1, 2;

INSERT INTO readings_1h (series_id, bucket, min, max, sum, count)
SELECT series_id, (ts / 3600000000) * 3600000000, min(value), max(value), sum(value), count(*)
FROM readings GROUP BY 1, 2;
