//! In-process TLS for the HTTP service (`http.tls.cert` / `http.tls.key`): a listener for
//! `serve.rs` that hands over connections once their TLS handshake is done. Handshakes run
//! in their own tasks (bounded by a timeout), so a slow or silent client never holds up the
//! accept loop; graceful shutdown works unchanged.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for `serve` to take them.
const READY_QUEUE: usize = 64;

/// The server's rustls configuration from PEM files (ring, TLS 1.2 and 1.3, HTTP/1.1).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {} (http.tls.cert)", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} (http.tls.cert) is not PEM certificates", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{} (http.tls.cert) holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "cannot read a PEM private key from {} (http.tls.key)",
            key.display()
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("http.tls.cert and http.tls.key do not form a usable certificate and key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and yields them once TLS is established.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// At most `max_pending` connections are between accept and hand-over (handshaking or
    /// waiting for the server to take them): beyond, new ones wait in the listen backlog.
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        max_pending: usize,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let pending = Arc::new(Semaphore::new(max_pending.max(1)));
        let acceptor_task = tokio::spawn(async move {
            loop {
                let Ok(slot) = pending.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(client.ip = %peer.ip(), error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(client.ip = %peer.ip(), "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local_addr,
            acceptor_task,
        })
    }
}

impl Drop for TlsListener {
    /// `serve` drops its listener when it stops accepting (graceful shutdown): so does
    /// the accept loop, and the port closes.
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (aborted): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::server_config;

    #[test]
    fn a_certificate_and_its_key_make_a_server_config_and_junk_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ddms.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path, junk) = (
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
            dir.path().join("junk.pem"),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(&junk, "not a certificate").unwrap();
        let config = server_config(&cert_path, &key_path).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let err = format!("{:#}", server_config(&junk, &key_path).unwrap_err());
        assert!(err.contains("http.tls.cert"), "{err}");
        let err = format!("{:#}", server_config(&cert_path, &junk).unwrap_err());
        assert!(err.contains("http.tls.key"), "{err}");
        // A key that is not the certificate's.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key_path, other.serialize_pem()).unwrap();
        let err = format!("{:#}", server_config(&cert_path, &key_path).unwrap_err());
        assert!(err.contains("do not form"), "{err}");
    }
}
