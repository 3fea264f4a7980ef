//! `ddms serve`: wires the store, background tasks and the HTTP service, and shuts them down in
//! order on SIGTERM/SIGINT.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http::{self, AppState, Metrics};
use crate::store::{self, Store};

/// A bound, not yet running server. Binding first lets callers (tests) learn the port.
pub struct Server {
    listener: TcpListener,
    state: AppState,
}

impl Server {
    /// Connects the store (migrating when configured) and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Server> {
        let store = store::connect(
            &config.database_url(),
            config.database.max_connections,
            config.database.connect_timeout,
        )
        .await
        .context("cannot open the database")?;
        if config.database.migrate_on_start {
            match store.migrate().await {
                Ok(status) => tracing::info!(
                    db.backend = store.backend().name(),
                    migrations.applied = status.applied.len(),
                    "database schema is current"
                ),
                // Not fatal: the service starts, reports not-ready, and the operator sees why.
                Err(e) => {
                    tracing::error!(error = %e, "migrations failed at start-up; /ready will say so")
                }
            }
        }
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
        let state = AppState {
            store,
            metrics: Metrics::new(crate::VERSION, crate::GIT_SHA),
            config: Arc::new(config),
        };
        Ok(Server { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// for up to `http.shutdown_timeout`, stops background tasks and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server { listener, state } = self;
        let config = state.config.clone();
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(maintain_partitions(
            state.store.clone(),
            config.database.partitions_ahead_days,
            cancel.clone(),
        ));

        let addr = listener.local_addr()?;
        tracing::info!(
            http.listen = %addr,
            url = %format!("http://{addr}/"),
            db.backend = state.store.backend().name(),
            version = crate::VERSION,
            "ddms is serving"
        );
        let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let stop_accepting = cancel.clone();
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop_accepting.cancelled().await })
            .into_future();
        let mut server = tokio::spawn(server);

        tokio::select! {
            result = &mut server => {
                cancel.cancel();
                result.context("HTTP server task failed")?.context("HTTP server failed")?;
            }
            () = shutdown => {
                tracing::info!(timeout_s = config.http.shutdown_timeout.as_secs(), "shutting down: no new connections, finishing in-flight requests");
                cancel.cancel();
                match tokio::time::timeout(config.http.shutdown_timeout, &mut server).await {
                    Ok(result) => result.context("HTTP server task failed")?.context("HTTP server failed")?,
                    Err(_) => {
                        tracing::warn!("in-flight requests did not finish within http.shutdown_timeout; closing them");
                        server.abort();
                    }
                }
            }
        }
        tasks.close();
        tasks.wait().await;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Keeps daily reading partitions created ahead. Every instance may run it: the store takes
/// an advisory lock and skips existing partitions.
async fn maintain_partitions(store: Arc<dyn Store>, days_ahead: u32, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_secs(3600));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        match store
            .ensure_partitions(chrono::Utc::now(), days_ahead)
            .await
        {
            Ok(0) => {}
            Ok(created) => {
                tracing::info!(partitions.created = created, "reading partitions created")
            }
            Err(e) => tracing::warn!(error = %e, "cannot create reading partitions; will retry"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "signal received"),
        () = terminate => tracing::info!(signal = "SIGTERM", "signal received"),
    }
}
