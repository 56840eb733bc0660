//! The accept loop. Like `axum::serve`, it serves HTTP/1.1 and HTTP/2 with
//! upgrades (WebSockets) and drains gracefully; unlike it, it shares one
//! router and one connection builder among all connections (an idle SSE
//! stream or WebSocket should cost as little as it can), gives clients a
//! deadline to send their request headers (slowloris), and survives accept
//! errors such as running out of file descriptors.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops
/// accepting and waits for the open connections to finish (the caller
/// bounds that wait). A client that takes longer than `header_timeout` to
/// send a request's headers is disconnected.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // WebSockets over HTTP/2 (RFC 8441) need the CONNECT protocol.
    builder.http2().enable_connect_protocol();
    let service =
        TowerToHyperService::new(router.map_request(|req: Request<Incoming>| req.map(Body::new)));
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: wait for connections to close
                    // rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service.clone())
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
