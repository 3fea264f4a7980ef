//! The HTTP/1.1 accept loop (instead of `axum::serve`, which sets neither a header-read
//! timeout nor a connection limit): at most `http.max_connections` connections at once —
//! beyond, new ones wait in the listen backlog until one closes — and a connection that has
//! not sent a complete request head within `http.header_read_timeout` is closed, whether it is
//! a slow client dribbling header bytes or an idle keep-alive connection. Graceful shutdown:
//! stop accepting, let every connection finish the request it is serving, then return.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::Metrics;

#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once (`http.max_connections`).
    pub max_connections: usize,
    /// Longest wait for a complete request head (`http.header_read_timeout`).
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `stop` is cancelled, then waits for open connections to
/// finish their current request (idle ones close at once).
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: ServeLimits,
    metrics: Metrics,
    stop: CancellationToken,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        // The slot first: at the limit, connections queue in the kernel, unaccepted.
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (io, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(Body::new)).await;
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        let open = metrics.connection_opened();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Header timeouts, resets, malformed requests: the client's business.
                tracing::debug!(client.ip = %peer.ip(), error = %e, "connection ended with an error");
            }
            drop(open);
            drop(slot);
        });
    }
    // Closes the port; connections already accepted finish what they are serving.
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
