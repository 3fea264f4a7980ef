//! The whole stop fits the service manager's stop timeout: with the database hanging (a table
//! locked by someone else), an in-flight request and the ingest flush both wait on it, yet ddms
//! exits within `http.shutdown_timeout` (one deadline for every phase), before systemd's
//! `TimeoutStopSec` would SIGKILL it mid-flush.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use sqlx::Connection;

use crate::support::app::{database_url, Db, DdmsProcess};
use crate::support::services::Provider;

/// `TimeoutStopSec` of the shipped unit: what the stop must fit in.
fn unit_stop_timeout() -> Duration {
    let unit =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/systemd/ddms@.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let seconds = text
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .expect("the unit sets TimeoutStopSec")
        .trim()
        .parse()
        .unwrap();
    Duration::from_secs(seconds)
}

#[tokio::test]
async fn a_stop_with_a_hanging_database_finishes_within_the_units_stop_timeout() {
    let (url, dir) = database_url(&Db::Postgres(Provider::from_env().await)).await;
    let store = ddms::store::connect(&SecretString::from(url.clone()), 2, Duration::from_secs(5))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    // Defaults otherwise: http.shutdown_timeout 25 s, http.request_timeout 30 s.
    let env = [("DDMS_DATABASE__URL", url.as_str())];
    let mut ddms = DdmsProcess::serve_with_args(dir.path(), &["serve", "--demo"], &env)
        .await
        .unwrap();
    // The demo's simulated devices feed the ingest pipeline every second.
    let started = Instant::now();
    let (device, metric) = 'found: loop {
        for d in store.list_devices().await.unwrap() {
            if let Some(latest) = store.latest_readings(d.id).await.unwrap().first() {
                break 'found (d.id, latest.metric.clone());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no demo readings stored"
        );
        // sleep: the poll interval of this wait with a deadline (the first demo reading)
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let secret = ddms::auth::generate_api_token();
    store
        .create_api_token(&ddms::store::NewApiToken {
            name: "shutdown-test".into(),
            token_hash: ddms::auth::hash_api_token(&secret),
            role: ddms::store::Role::Viewer,
        })
        .await
        .unwrap();

    // The hanging component: readings locked, so the writer's next insert and any readings
    // query wait on the lock.
    let mut locker = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let request = tokio::spawn({
        let url = ddms.url(&format!("/api/devices/{device}/readings?metric={metric}"));
        async move {
            let _ = reqwest::Client::new()
                .get(url)
                .bearer_auth(secret)
                .send()
                .await;
        }
    });
    let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        // The readings query and the writer's insert.
        if waiting >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "only {waiting} sessions wait on the lock"
        );
        // sleep: the poll interval of this wait with a deadline (it reports how many wait on the lock)
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stopped = Instant::now();
    ddms.signal(nix::sys::signal::Signal::SIGTERM);
    // Long enough to see how long the stop takes without a deadline.
    let _ = ddms.wait_exit(Duration::from_secs(180)).await;
    let took = stopped.elapsed();
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    request.abort();
    let limit = unit_stop_timeout();
    println!("stop with a hanging database took {took:?} (the unit allows {limit:?})");
    assert!(
        took < limit,
        "the stop took {took:?}; systemd would have SIGKILLed ddms at {limit:?}"
    );
}
