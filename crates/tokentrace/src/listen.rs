//! Serving a router on a listener, as `axum::serve` does, plus what it does not offer: a
//! deadline for a client to send its request head (`header_read_timeout`), so that a client
//! which opens a connection and sends half a header is dropped instead of holding it.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves `app` until `stop` turns true, then waits for open connections to finish their
/// requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    // The guard `wait_for` returns is dropped inside, so the future stays `Send`.
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await.map(|_| ());
    };
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
                let service = TowerToHyperService::new(app.clone());
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            () = &mut stopping => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
