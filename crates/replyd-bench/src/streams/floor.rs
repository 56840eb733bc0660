//! The streams scenario's floor: a bare hyper HTTP/1.1 SSE broadcaster with
//! no replyd logic, in a process of its own (`replyd bench-floor-sse`).

use bytes::Bytes;
use hyper::StatusCode;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// `replyd bench-floor-sse --listen ADDR` (hidden): the floor of the
/// streams scenario, a bare hyper HTTP/1.1 server with no replyd logic.
/// `GET /events/{i}` opens an SSE stream fed by its own channel and sends
/// a `job.accepted` event at once; `POST /complete/{i}` sends stream i a
/// `job.succeeded` event and ends it, as replyd ends a job's stream after
/// its terminal event. Announces `floor listening on http://ADDR` on
/// stderr.
pub async fn serve_floor(listen: SocketAddr) -> anyhow::Result<()> {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("floor listening on http://{}", listener.local_addr()?);
    let streams: Arc<Mutex<HashMap<u64, tokio::sync::mpsc::Sender<Bytes>>>> = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let streams = streams.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| floor_handle(req, streams.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A representation of about the size replyd sends.
const FLOOR_DATA: &str = r#"{"id":"0198c2a5-7f3e-7b61-9a2c-5d4e3f2a1b0c","queue":"bench","state":"succeeded","progress":null,"attempt":1,"max_attempts":1,"cancel_requested":false,"created_at":"2026-11-28T12:00:00.000Z","updated_at":"2026-11-28T12:00:01.000Z","finished_at":"2026-11-28T12:00:01.000Z","expires_at":"2026-11-29T12:00:01.000Z","error":null,"links":{"self":"/v1/jobs/0198c2a5-7f3e-7b61-9a2c-5d4e3f2a1b0c","result":"/v1/jobs/0198c2a5-7f3e-7b61-9a2c-5d4e3f2a1b0c/result","events":"/v1/jobs/0198c2a5-7f3e-7b61-9a2c-5d4e3f2a1b0c/events"}}"#;

async fn floor_handle(
    req: hyper::Request<hyper::body::Incoming>,
    streams: Arc<Mutex<HashMap<u64, tokio::sync::mpsc::Sender<Bytes>>>>,
) -> Result<hyper::Response<FloorBody>, std::convert::Infallible> {
    let path = req.uri().path();
    let index = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|i| i.parse::<u64>().ok())
    };
    let respond = |status: StatusCode, body: FloorBody| {
        let mut res = hyper::Response::new(body);
        *res.status_mut() = status;
        res
    };
    let lock = || streams.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = index("/events/") {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let _ = tx.try_send(Bytes::from(format!(
            "id: {}\nevent: job.accepted\ndata: {FLOOR_DATA}\n\n",
            2 * i
        )));
        lock().insert(i, tx);
        let mut res = respond(StatusCode::OK, FloorBody::Stream(rx));
        let h = res.headers_mut();
        h.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-store"),
        );
        return Ok(res);
    }
    if let Some(i) = index("/complete/") {
        let tx = lock().remove(&i);
        return Ok(match tx {
            Some(tx) => {
                let _ = tx.try_send(Bytes::from(format!(
                    "id: {}\nevent: job.succeeded\ndata: {FLOOR_DATA}\n\n",
                    2 * i + 1
                )));
                respond(StatusCode::OK, FloorBody::Empty)
            }
            None => respond(StatusCode::NOT_FOUND, FloorBody::Empty),
        });
    }
    Ok(respond(StatusCode::NOT_FOUND, FloorBody::Empty))
}

/// The floor's bodies: nothing, or a stream fed by a channel (ending when
/// the sender is dropped).
enum FloorBody {
    Empty,
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for FloorBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            FloorBody::Empty => std::task::Poll::Ready(None),
            FloorBody::Stream(rx) => rx
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, FloorBody::Empty)
    }
}
