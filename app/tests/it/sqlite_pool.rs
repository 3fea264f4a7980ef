//! The SQLite pool gives back what a burst opened: connections (each with a worker thread, a
//! statement cache and a page cache) must not stay for good once the burst is over.

use std::time::Duration;

use ddms::store::{DeviceStore, SettingsStore, SqliteStore, Store};

use crate::support::alerting::eventually;

/// A migrated store on a new file `ddms.db` in a temp dir, with `connections` connections.
async fn open_migrated(connections: u32) -> (SqliteStore, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ddms.db");
    let store = SqliteStore::open(path.to_str().unwrap(), connections, Duration::from_secs(5))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    (store, dir, path)
}

#[tokio::test]
async fn the_sqlite_pool_shrinks_after_a_burst_while_light_traffic_goes_on() {
    let (store, _dir, _path) = open_migrated(16).await;
    let pool = store.pool().clone();

    // A burst: as many reads at once as the read pool has connections (16 configured: 15
    // readers and the writer), each holding a connection.
    let readers = pool.options().get_max_connections();
    assert_eq!(readers, 15);
    let held = futures::future::join_all((0..readers).map(|_| pool.acquire())).await;
    let held: Vec<_> = held.into_iter().map(|c| c.unwrap()).collect();
    assert_eq!(pool.size(), readers);
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

/// Writes wait for SQLite's one write lock; reads must not wait behind them. Before the store
/// had a writer connection of its own, writes stuck on the lock each held one of the pool's
/// connections (sleeping in SQLite's busy handler), so a burst of them — thousands of devices'
/// status changes at start-up — left the API's reads queued for seconds (seen in `bench api`
/// with 5,000 devices). Here another process holds the write lock while more writes than the
/// pool has connections are under way; a read must answer before any of them could finish.
#[tokio::test]
async fn reads_answer_while_writes_queue_for_the_write_lock() {
    use sqlx::Connection;
    let (store, _dir, path) = open_migrated(4).await;
    let store = std::sync::Arc::new(store);
    let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let writes: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_setting(&format!("key-{i}"), &serde_json::json!(i))
                    .await
            })
        })
        .collect();
    // The test's runtime has one thread: yielding lets every write start (and queue for a
    // connection) before the read asks for one.
    for _ in 0..writes.len() {
        tokio::task::yield_now().await;
    }
    let devices = store.list_devices().await.unwrap();
    assert!(devices.is_empty());
    assert!(
        writes.iter().all(|w| !w.is_finished()),
        "the read answered only after writes gave up on the lock"
    );
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    drop(holder);
    for write in writes {
        // Each write then takes its turn on the free lock.
        write.await.unwrap().unwrap();
    }
    assert_eq!(
        store.get_setting("key-7").await.unwrap(),
        Some(serde_json::json!(7))
    );
}

/// Commits only append to the write-ahead log (the writer checkpoints by itself only once the
/// log is large); `Store::checkpoint`, which the server calls every second, copies them into
/// the database file from a connection of its own.
#[tokio::test]
async fn a_checkpoint_moves_committed_writes_into_the_database_file() {
    let (store, dir, path) = open_migrated(4).await;
    store
        .create_group("checkpointed")
        .await
        .expect("a committed write");
    // What the database file alone holds: a copy of it without its log.
    let in_database_file = |name: &'static str| {
        let copy = dir.path().join(format!("{name}.db"));
        std::fs::copy(&path, &copy).unwrap();
        async move {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&copy)
                .read_only(true)
                .immutable(true);
            let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM device_groups WHERE name = 'checkpointed'",
            )
            .fetch_one(&mut conn)
            .await
            .ok()
        }
    };
    assert_ne!(
        in_database_file("before").await,
        Some(1),
        "the commit is only in the log yet"
    );
    store.checkpoint().await.unwrap();
    assert_eq!(in_database_file("after").await, Some(1));
}
