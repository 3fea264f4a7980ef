//! Shared by every integration test: throwaway services and the ddms under test.

pub mod alerting;
pub mod app;
pub mod browser;
pub mod ports;
pub mod release;
pub mod services;
pub mod session;
pub mod wait;
pub mod webhook;

/// Runs each named `async fn(Db)` once per store: a module named after the function with a
/// `sqlite` test and a `postgres` test (PostgreSQL from the machine's provider, Docker or local
/// processes as `DDMS_TEST_SERVICES` says). `on_each_backend!(local_postgres: f)` takes
/// PostgreSQL as a local process always (tests that must not need Docker).
macro_rules! on_each_backend {
    (local_postgres: $($test:ident),+ $(,)?) => {
        $crate::support::on_each_backend!(@expand
            $crate::support::services::Provider::Local; $($test),+);
    };
    ($($test:ident),+ $(,)?) => {
        $crate::support::on_each_backend!(@expand
            $crate::support::services::Provider::from_env().await; $($test),+);
    };
    (@expand $provider:expr; $($test:ident),+) => {
        $(
            mod $test {
                #[tokio::test]
                async fn sqlite() {
                    super::$test($crate::support::app::Db::Sqlite).await;
                }

                #[tokio::test]
                async fn postgres() {
                    super::$test($crate::support::app::Db::Postgres($provider)).await;
                }
            }
        )+
    };
}
pub(crate) use on_each_backend;
