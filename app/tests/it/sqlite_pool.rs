//! The SQLite pool gives back what a burst opened: connections (each with a worker thread, a
//! statement cache and a page cache) must not stay for good once the burst is over.

use std::time::Duration;

use ddms::store::{SqliteStore, Store};

use crate::support::alerting::eventually;

#[tokio::test]
async fn the_sqlite_pool_shrinks_after_a_burst_while_light_traffic_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ddms.db");
    let store = SqliteStore::open(path.to_str().unwrap(), 16, Duration::from_secs(5))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let pool = store.pool().clone();

    // A burst: sixteen requests at once, each holding a connection.
    let held = futures::future::join_all((0..16).map(|_| pool.acquire())).await;
    let held: Vec<_> = held.into_iter().map(|c| c.unwrap()).collect();
    assert_eq!(pool.size(), 16);
    drop(held);

    // Then light traffic: one request at a time, more often than `idle_timeout` comes round for
    // any connection (the pool hands out the oldest idle one first), as a dashboard keeps up.
    eventually(
        "the pool to close the connections the burst opened",
        Duration::from_secs(180),
        || async {
            store.ping(Duration::from_secs(5)).await.unwrap();
            pool.size() <= 2
        },
    )
    .await;
}
