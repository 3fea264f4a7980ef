//! A chunk's rollup rows computed here instead of by PostgreSQL, for the plain insert (the one
//! that refuses a duplicate): when it succeeds, every reading of the chunk is new, so the
//! rollups to fold in are known before the statement runs. PostgreSQL then no longer keeps the
//! inserted rows for `RETURNING`, bins them with `date_bin` and aggregates them twice; it
//! upserts the buckets it is given.
//!
//! The buckets must be the ones the SQL path makes (`date_bin` from 2000-01-01, on the
//! microseconds PostgreSQL stores), so this path is taken only where that is plainly so:
//! readings in key order, on or after 2000-01-01, finite values. Anything else goes the SQL way.

use chrono::{DateTime, Utc};

use crate::store::{Reading, RollupStep};

/// One rollup table's rows for a statement, as parallel columns (bound as arrays).
#[derive(Debug, Default, PartialEq)]
pub(super) struct RollupRows {
    pub series: Vec<i64>,
    pub bucket: Vec<DateTime<Utc>>,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    pub sum: Vec<f64>,
    pub count: Vec<i64>,
}

impl RollupRows {
    fn with_capacity(rows: usize) -> Self {
        RollupRows {
            series: Vec::with_capacity(rows),
            bucket: Vec::with_capacity(rows),
            min: Vec::with_capacity(rows),
            max: Vec::with_capacity(rows),
            sum: Vec::with_capacity(rows),
            count: Vec::with_capacity(rows),
        }
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Folds an aggregate into the last row when it is the same bucket, else starts a row.
    /// Sums add up in input order, as PostgreSQL's `sum` over the inserted rows does for a
    /// minute (an hour's minutes it adds in hash-table order: the last bit may differ).
    fn fold(&mut self, series: i64, bucket: DateTime<Utc>, min: f64, max: f64, sum: f64, n: i64) {
        let last = self.len().wrapping_sub(1);
        if self.series.last() == Some(&series) && self.bucket.last() == Some(&bucket) {
            self.min[last] = self.min[last].min(min);
            self.max[last] = self.max[last].max(max);
            self.sum[last] += sum;
            self.count[last] += n;
        } else {
            self.series.push(series);
            self.bucket.push(bucket);
            self.min.push(min);
            self.max.push(max);
            self.sum.push(sum);
            self.count.push(n);
        }
    }
}

/// The minute and hour rows of `readings`, in key order; the hours add up the minutes, as the
/// SQL path does. `None` where the result might differ from PostgreSQL's own binning.
pub(super) fn batch_rollups(readings: &[Reading]) -> Option<(RollupRows, RollupRows)> {
    // `date_bin` before its origin, and sqlx's encoding of timestamps before PostgreSQL's
    // epoch (it truncates toward 2000-01-01), round the other way from a floor.
    let origin = DateTime::<Utc>::from_timestamp(946_684_800, 0)?;
    let in_key_order = readings
        .windows(2)
        .all(|pair| (pair[0].series, pair[0].ts) < (pair[1].series, pair[1].ts));
    let plain = readings
        .iter()
        .all(|r| r.ts >= origin && r.value.is_finite());
    if !in_key_order || !plain {
        return None;
    }
    let mut minutes = RollupRows::with_capacity(readings.len().min(1024));
    for r in readings {
        let bucket = RollupStep::Minute.bucket(r.ts);
        minutes.fold(r.series, bucket, r.value, r.value, r.value, 1);
    }
    let mut hours = RollupRows::with_capacity(minutes.len());
    for i in 0..minutes.len() {
        hours.fold(
            minutes.series[i],
            RollupStep::Hour.bucket(minutes.bucket[i]),
            minutes.min[i],
            minutes.max[i],
            minutes.sum[i],
            minutes.count[i],
        );
    }
    Some((minutes, hours))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn reading(series: i64, at: &str, value: f64) -> Reading {
        Reading {
            series,
            ts: at.parse().unwrap(),
            value,
        }
    }

    #[test]
    fn minutes_aggregate_their_readings_and_hours_their_minutes_in_key_order() {
        let readings = [
            reading(1, "2026-12-07T10:00:01Z", 3.0),
            reading(1, "2026-12-07T10:00:59.999999Z", -1.0),
            reading(1, "2026-12-07T10:01:00Z", 5.0),
            reading(1, "2026-12-07T11:00:00Z", 7.0),
            reading(2, "2026-12-07T10:00:30Z", 2.5),
        ];
        let (minutes, hours) = batch_rollups(&readings).expect("plain readings");
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            minutes,
            RollupRows {
                series: vec![1, 1, 1, 2],
                bucket: vec![
                    at("2026-12-07T10:00:00Z"),
                    at("2026-12-07T10:01:00Z"),
                    at("2026-12-07T11:00:00Z"),
                    at("2026-12-07T10:00:00Z"),
                ],
                min: vec![-1.0, 5.0, 7.0, 2.5],
                max: vec![3.0, 5.0, 7.0, 2.5],
                sum: vec![2.0, 5.0, 7.0, 2.5],
                count: vec![2, 1, 1, 1],
            }
        );
        assert_eq!(
            hours,
            RollupRows {
                series: vec![1, 1, 2],
                bucket: vec![
                    at("2026-12-07T10:00:00Z"),
                    at("2026-12-07T11:00:00Z"),
                    at("2026-12-07T10:00:00Z"),
                ],
                min: vec![-1.0, 7.0, 2.5],
                max: vec![5.0, 7.0, 2.5],
                sum: vec![7.0, 7.0, 2.5],
                count: vec![3, 1, 1],
            }
        );
    }

    #[test]
    fn readings_the_sql_path_might_bin_otherwise_are_left_to_it() {
        let before_2000 = [reading(1, "1999-12-31T23:59:30Z", 1.0)];
        assert!(batch_rollups(&before_2000).is_none());
        let out_of_order = [
            reading(2, "2026-12-07T10:00:00Z", 1.0),
            reading(1, "2026-12-07T10:00:00Z", 1.0),
        ];
        assert!(batch_rollups(&out_of_order).is_none());
        let repeated = [
            reading(1, "2026-12-07T10:00:00Z", 1.0),
            reading(1, "2026-12-07T10:00:00Z", 2.0),
        ];
        assert!(batch_rollups(&repeated).is_none(), "one bucket row twice");
        let not_finite = [reading(1, "2026-12-07T10:00:00Z", f64::NAN)];
        assert!(batch_rollups(&not_finite).is_none());
        let origin = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
        let at_origin = [Reading {
            series: 1,
            ts: origin,
            value: 1.0,
        }];
        assert!(batch_rollups(&at_origin).is_some());
    }
}
