//! `/ready` follows the database: it turns 503 naming the failing component when PostgreSQL
//! stops, and back to 200 when it returns, without restarting ddms; `/health` stays 200.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::app::{spawn_app, Db};
use crate::support::services::{Postgres, Provider};

async fn wait_for_status(app: &crate::support::app::TestApp, want: u16, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let response = app.get("/ready").await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if status == want {
            return body;
        }
        assert!(
            started.elapsed() < within,
            "/ready still {status} after {within:?}: {body}"
        );
        // sleep: the poll interval of this wait with a deadline (it reports the last body)
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ready_turns_503_when_postgres_stops_and_recovers_when_it_returns() {
    // Its own server: stopping the shared one would break the other tests.
    let server: &'static Postgres = Box::leak(Box::new(
        Postgres::start(Provider::from_env().await).await.unwrap(),
    ));
    let app = spawn_app(Db::PostgresOn(server), "").await;
    wait_for_status(&app, 200, Duration::from_secs(30)).await;

    server.stop().await.unwrap();
    // A ceiling for a busy machine, not a latency target: each probe bounds its own database
    // check, so a stopped server shows within a probe or two.
    let body = wait_for_status(&app, 503, Duration::from_secs(30)).await;
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["components"]["database"]["status"], "error", "{body}");
    // A verdict, not the driver's text (hosts, users, file paths) for anonymous callers.
    assert_eq!(
        body["components"]["database"]["error"], "database unreachable",
        "{body}"
    );
    assert_eq!(
        app.get("/health").await.status(),
        200,
        "liveness is not readiness"
    );

    server.restart().await.unwrap();
    wait_for_status(&app, 200, Duration::from_secs(30)).await;
    app.stop().await;
}
