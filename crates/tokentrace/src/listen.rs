//! Serving a router on a listener, as `axum::serve` does, plus what it does not offer: a
//! deadline for a client to send its request head (`header_read_timeout`), so that a client
//! which opens a connection and sends half a header is dropped instead of holding it, and
//! HTTPS (`server.tls`, rustls), and a bound on the connections open at once
//! (`server.max_connections`, shared by both ports): past it a connection is answered 503.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokentrace_server::{Admission, ConnectionBudget};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How long a refused connection is given to send a request head and read the 503.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);

/// The TLS acceptor of `server.tls`; the message names the file at fault.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("server.tls.cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "server.tls.cert_file {}: no certificate in it",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("server.tls.key_file {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("server.tls: the key does not fit the certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` until `stop` turns true, then lets open connections finish their requests
/// (idle ones close at once) and returns when they have (the caller bounds that wait). A
/// connection accepted while `budget` has none left is answered 503 and closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: watch::Receiver<bool>,
    header_timeout: Duration,
    tls: Option<TlsAcceptor>,
    budget: ConnectionBudget,
) {
    let mut connections = tokio::task::JoinSet::new();
    let stopping = stopped(stop.clone());
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a moment, go on.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let permit = match budget.admit() {
                    Admission::Open(permit) => permit,
                    Admission::Refuse(permit) => {
                        let (budget, tls) = (budget.clone(), tls.clone());
                        connections.spawn(async move {
                            let _ = tokio::time::timeout(
                                REFUSAL_DEADLINE,
                                refuse(stream, tls, budget),
                            )
                            .await;
                            drop(permit);
                        });
                        continue;
                    }
                    Admission::Close => continue,
                };
                let (app, stop, tls) = (app.clone(), stop.clone(), tls.clone());
                connections.spawn(async move {
                    let _permit = permit;
                    match tls {
                        None => connection(stream, app, stop, header_timeout).await,
                        Some(acceptor) => {
                            // The handshake gets the same deadline as a request head.
                            match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => connection(s, app, stop, header_timeout).await,
                                Ok(Err(e)) => tracing::debug!("TLS handshake: {e}"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        }
                    }
                });
                // Forget the connections that are done.
                while connections.try_join_next().is_some() {}
            }
            () = &mut stopping => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// One connection: served until it closes, or, once `stop` turns true, until its request in
/// progress is answered.
async fn connection<I>(io: I, app: Router, stop: watch::Receiver<bool>, header_timeout: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = stopped(stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Answers every request of a connection over the limit with the budget's 503, then closes it.
async fn refuse(stream: tokio::net::TcpStream, tls: Option<TlsAcceptor>, budget: ConnectionBudget) {
    match tls {
        None => refuse_on(stream, budget).await,
        Some(acceptor) => {
            if let Ok(s) = acceptor.accept(stream).await {
                refuse_on(s, budget).await;
            }
        }
    }
}

async fn refuse_on<I>(io: I, budget: ConnectionBudget)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |_request| {
        let response = budget.refusal();
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(REFUSAL_DEADLINE)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Resolves once `stop` is true (the guard `wait_for` returns is dropped inside, so the future
/// is `Send`).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}
