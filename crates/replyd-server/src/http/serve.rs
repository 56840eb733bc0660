//! The accept loop. Like `axum::serve`, it serves HTTP/1.1 (with upgrades:
//! WebSockets) and HTTP/2 (prior knowledge) and drains gracefully; unlike
//! it, it shares one router and one pair of connection builders among all
//! connections (an idle SSE stream or WebSocket should cost as little as it
//! can), gives clients a deadline to send their request headers
//! (slowloris), and survives accept errors such as running out of file
//! descriptors.
//!
//! The protocol is chosen by peeking at the first bytes (the HTTP/2
//! preface) without consuming them. hyper-util's `auto` builder reads them
//! instead and hands hyper a 24-byte head start, which makes hyper's HTTP/1
//! read buffer grow from 8 to 16 KiB on every connection: measured with
//! heaptrack, it was the largest cost of an idle SSE stream.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// What an HTTP/2 connection with prior knowledge starts with (RFC 9113).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new());
    // WebSockets over HTTP/2 (RFC 8441) need the CONNECT protocol.
    h2.enable_connect_protocol();
    let service =
        TowerToHyperService::new(router.map_request(|req: Request<Incoming>| req.map(Body::new)));
    // Each connection task holds a clone of `open`; when the last is
    // dropped, every connection has ended.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
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
        let (h1, h2, service) = (h1.clone(), h2.clone(), service.clone());
        let (open, shutdown) = (open.clone(), shutdown.clone());
        tokio::spawn(async move {
            // A connection that has sent nothing yet when draining begins
            // has no request to finish: it is closed.
            let is_h2 = tokio::select! {
                peeked = tokio::time::timeout(header_timeout, speaks_h2(&stream)) => {
                    peeked.unwrap_or(Ok(false))
                }
                _ = shutdown.cancelled() => return,
            };
            let io = TokioIo::new(stream);
            let served = match is_h2 {
                Err(_) => return,
                Ok(true) => until_drained!(h2.serve_connection(io, service), shutdown),
                Ok(false) => {
                    until_drained!(h1.serve_connection(io, service).with_upgrades(), shutdown)
                }
            };
            if let Err(e) = served {
                tracing::trace!(error = %e, "connection ended with an error");
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open);
    let _ = all_closed.recv().await;
}

/// Drives a hyper connection to its end; once `shutdown` is cancelled, asks
/// it to finish what it is doing and stop (HTTP/1: after the response in
/// flight; HTTP/2: GOAWAY).
macro_rules! until_drained {
    ($conn:expr, $shutdown:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = $shutdown.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }};
}
use until_drained;

/// Whether the connection opens with the HTTP/2 preface, judged from its
/// first bytes without consuming them.
async fn speaks_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface so far: wait for the rest.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
