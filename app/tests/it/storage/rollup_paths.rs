//! The rollups of a batch are the same whichever way the batch went in. On PostgreSQL a plain
//! insert is given rollup rows computed in Rust, while an insert after a refused duplicate
//! (`ON CONFLICT DO NOTHING`) has PostgreSQL bin and aggregate the rows it stored: both must
//! give the same buckets, minima, maxima and counts. Sums may differ in the last bit: floating
//! point addition depends on its order, and PostgreSQL adds an hour's minutes in the order of
//! its hash table.

use super::*;

/// Readings of one series: sub-second times (nanoseconds too, which the database cuts to
/// microseconds) that straddle minute and hour boundaries, values of mixed sign and size.
fn awkward_batch(series: i64) -> Vec<Reading> {
    let start = Utc.with_ymd_and_hms(2026, 9, 1, 9, 58, 0).unwrap();
    (0..400i64)
        .map(|i| Reading {
            series,
            ts: start
                + chrono::Duration::milliseconds(i * 1_337)
                + chrono::Duration::nanoseconds(if i % 7 == 0 { 999_999_999 } else { i * 13 }),
            value: ((i * 7_919) % 1_000) as f64 / 7.0 - 50.0 + 1e-9 * i as f64,
        })
        .collect()
}

pub(super) async fn rollups_are_the_same_after_a_plain_insert_and_after_a_refused_duplicate(
    store: Arc<dyn Store>,
) {
    let device = store.create_device(&modbus_device("paths")).await.unwrap();
    let plain = store.ensure_series(device.id, "plain", None).await.unwrap();
    let guarded = store
        .ensure_series(device.id, "guarded", None)
        .await
        .unwrap();
    let batch = awkward_batch(plain);
    assert_eq!(
        store.insert_readings(&batch).await.unwrap(),
        batch.len() as u64
    );
    // A duplicate: the store refuses or skips it, and on PostgreSQL inserts with `ON CONFLICT
    // DO NOTHING` for a while after — the next batch takes that path.
    assert_eq!(store.insert_readings(&batch[..1]).await.unwrap(), 0);
    let same = awkward_batch(guarded);
    assert_eq!(
        store.insert_readings(&same).await.unwrap(),
        same.len() as u64
    );
    let (from, to) = (batch[0].ts - chrono::Duration::hours(2), ts(0));
    for step in [RollupStep::Minute, RollupStep::Hour] {
        let of = |series| store.query_rollups(series, step, from, to, 1_000);
        let (a, b) = (of(plain).await.unwrap(), of(guarded).await.unwrap());
        assert!(a.len() >= 2, "{step:?}: {} buckets", a.len());
        let exact = |buckets: &[store::Bucket]| {
            buckets
                .iter()
                .map(|b| (b.ts, b.min, b.max, b.count))
                .collect::<Vec<_>>()
        };
        assert_eq!(exact(&a), exact(&b), "{step:?}");
        for (x, y) in a.iter().zip(&b) {
            let close = (x.avg - y.avg).abs() <= 1e-12 * x.avg.abs().max(1.0);
            assert!(close, "{step:?} at {}: avg {} vs {}", x.ts, x.avg, y.avg);
        }
        let counted: u64 = a.iter().map(|b| b.count).sum();
        assert_eq!(counted, batch.len() as u64, "{step:?}");
    }
}
