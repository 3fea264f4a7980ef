//! The HTTP service runs on a Tokio runtime of its own, beside the one that runs ingest
//! (pollers, the MQTT ingester, the batch writer, the event log, alerting).
//!
//! Why: a runtime's tasks share its run queues in turn, without priorities. With thousands of
//! live streams, one fan-out wakes every stream's connection task at once; on a shared
//! runtime, each step of a reading's way to the dashboard (the device's answer, the batch
//! writer, the event log's append and fan-out) then waited behind all of them, and a busy
//! dashboard slowed ingest itself. On two runtimes the operating system schedules their
//! threads, and the lightly loaded ingest threads run as soon as they wake: `bench sse
//! --clients 10000` went from p99 474 ms to a median of 230 ms (docs/benchmarks.md). Each
//! runtime has as many worker threads as the machine has cores.
//!
//! Everything that serves HTTP is spawned here: the accept loop, the connections, TLS
//! handshakes, and the handlers they run. Database connections are shared with ingest
//! through the store's pool; a connection opened by a handler is driven by this runtime's
//! I/O driver, so this runtime is shut down last, after the pipeline has flushed.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::serve::{serve, ServeLimits};
use super::tls::TlsListener;
use super::Metrics;

/// The HTTP service's runtime; dropping it stops whatever still runs there without waiting
/// (the server's own shutdown has let in-flight requests finish by then).
pub struct HttpRuntime {
    runtime: Option<Runtime>,
}

impl HttpRuntime {
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("ddms-http")
            .enable_all()
            .build()?;
        Ok(HttpRuntime {
            runtime: Some(runtime),
        })
    }

    fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime
            .as_ref()
            .expect("the runtime lives until dropped")
            .spawn(future)
    }

    /// Serves `router` on `listener` (with TLS when `tls` is given) on this runtime until
    /// `stop`, as [`serve`] does. The listener is moved to this runtime's I/O driver, so
    /// nothing of the HTTP service is driven by the caller's runtime.
    pub fn serve(
        &self,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        router: Router,
        limits: ServeLimits,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> std::io::Result<JoinHandle<std::io::Result<()>>> {
        let listener = listener.into_std()?;
        Ok(self.spawn(async move {
            let listener = TcpListener::from_std(listener)?;
            match tls {
                None => serve(listener, router, limits, metrics, stop).await,
                Some(tls) => {
                    let listener = TlsListener::new(listener, tls, limits.max_connections)?;
                    serve(listener, router, limits, metrics, stop).await
                }
            }
        }))
    }
}

impl Drop for HttpRuntime {
    fn drop(&mut self) {
        // `shutdown_background`, not a plain drop: this is dropped inside the other runtime,
        // where blocking on the worker threads is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;

    use super::*;

    /// The caller's runtime is a current-thread one here, as in `#[tokio::test]`s: the
    /// handler still runs on the HTTP runtime's threads, and dropping that runtime inside the
    /// caller's async code (as `Server::run` does) does not panic.
    #[tokio::test]
    async fn handlers_run_on_the_http_runtime_which_stops_when_dropped_in_async_code() {
        let router = Router::new().route(
            "/thread",
            get(|| async { std::thread::current().name().unwrap_or_default().to_owned() }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let runtime = HttpRuntime::start().unwrap();
        let stop = CancellationToken::new();
        let limits = ServeLimits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(5),
        };
        let metrics = Metrics::new("test", "test");
        let server = runtime
            .serve(listener, None, router, limits, metrics, stop.clone())
            .unwrap();
        let thread = reqwest::get(format!("http://{addr}/thread"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(thread, "ddms-http");
        stop.cancel();
        server.await.unwrap().unwrap();
        drop(runtime);
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the port is closed once the server has stopped"
        );
    }
}
