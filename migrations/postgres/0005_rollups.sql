-- Rollups of readings per series: 1-minute and 1-hour buckets (start of the bucket, UTC), kept
-- up to date by the statement that inserts readings (only readings that were new count, so a
-- redelivered message never counts twice). avg = sum / count. Long history ranges (days, weeks)
-- read these instead of millions of raw rows. Expand-only: a release without this table keeps
-- working; readings such a release writes while both run are not in the rollups.
CREATE TABLE readings_1m (
    series_id   BIGINT NOT NULL,
    bucket      TIMESTAMPTZ NOT NULL,
    min         DOUBLE PRECISION NOT NULL,
    max         DOUBLE PRECISION NOT NULL,
    sum         DOUBLE PRECISION NOT NULL,
    count       BIGINT NOT NULL,
    PRIMARY KEY (series_id, bucket)
);

CREATE TABLE readings_1h (
    series_id   BIGINT NOT NULL,
    bucket      TIMESTAMPTZ NOT NULL,
    min         DOUBLE PRECISION NOT NULL,
    max         DOUBLE PRECISION NOT NULL,
    sum         DOUBLE PRECISION NOT NULL,
    count       BIGINT NOT NULL,
    PRIMARY KEY (series_id, bucket)
);

-- History stored before this migration.
INSERT INTO readings_1m (series_id, bucket, min, max, sum, count)
SELECT series_id, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
       min(value), max(value), sum(value), count(*)
FROM readings GROUP BY 1, 2;

INSERT INTO readings_1h (series_id, bucket, min, max, sum, count)
SELECT series_id, date_bin('1 hour', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
       min(value), max(value), sum(value), count(*)
FROM readings GROUP BY 1, 2;
