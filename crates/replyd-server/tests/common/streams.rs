//! Clients for the live channels: a raw Server-Sent Events reader that also
//! sees comments and `retry:` (so tests can check keep-alives), and
//! WebSocket helpers over tokio-tungstenite.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// One block of an event stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comments: Vec<String>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap()).unwrap()
    }

    pub fn id(&self) -> i64 {
        self.id.as_deref().unwrap().parse().unwrap()
    }

    /// An event (not only a comment or a `retry:`).
    pub fn is_event(&self) -> bool {
        self.event.is_some() || self.data.is_some()
    }
}

/// Parses blocks out of a byte buffer, keeping the incomplete tail.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = find(&self.buf, b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8(block).expect("utf-8");
            let mut f = Frame::default();
            for line in text.lines() {
                if let Some(c) = line.strip_prefix(':') {
                    f.comments.push(c.trim().to_string());
                    continue;
                }
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value).to_string();
                match name {
                    "id" => f.id = Some(value),
                    "event" => f.event = Some(value),
                    "data" => f.data = Some(value),
                    "retry" => f.retry = Some(value.parse().unwrap()),
                    "" => {}
                    other => panic!("unknown SSE field {other:?}"),
                }
            }
            out.push(f);
        }
        out
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// An open event stream over reqwest.
pub struct Sse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: Option<futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    parser: Parser,
    queued: std::collections::VecDeque<Frame>,
}

impl Sse {
    /// `GET base+path` with these headers.
    pub async fn open(base: &str, path: &str, key: Option<&str>, headers: &[(&str, &str)]) -> Sse {
        let mut req = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .header("accept", "text/event-stream");
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        Sse {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: Some(res.bytes_stream().boxed()),
            parser: Parser::default(),
            queued: Default::default(),
        }
    }

    /// The next block, `None` at the end of the stream; panics after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(f) = self.queued.pop_front() {
                return Some(f);
            }
            let body = self.body.as_mut()?;
            let chunk = tokio::time::timeout_at(deadline, body.next())
                .await
                .expect("no SSE frame in time");
            match chunk {
                Some(Ok(b)) => self.queued.extend(self.parser.push(&b)),
                Some(Err(e)) => panic!("stream error: {e}"),
                None => {
                    self.body = None;
                    return None;
                }
            }
        }
    }

    /// The next event, skipping comments and `retry:` blocks.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            let f = self.next(wait).await?;
            if f.is_event() {
                return Some(f);
            }
        }
    }

    /// Events until (and with) a terminal one, or the end of the stream.
    pub async fn until_terminal(&mut self, wait: Duration) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = self.next_event(wait).await {
            let terminal = matches!(
                f.event.as_deref(),
                Some("job.succeeded" | "job.failed" | "job.canceled")
            );
            out.push(f);
            if terminal {
                break;
            }
        }
        out
    }

    /// Whether the stream ends (within `wait`).
    pub async fn ends(&mut self, wait: Duration) -> bool {
        loop {
            match self.next(wait).await {
                None => return true,
                Some(f) if f.is_event() => panic!("an event after the end: {f:?}"),
                Some(_) => {}
            }
        }
    }
}

/// A raw HTTP/1.1 event stream on a socket with a tiny receive buffer:
/// lets a test play a client that stops reading.
pub struct RawSse {
    pub stream: tokio::net::TcpStream,
    parser: Parser,
    head_done: bool,
    pending: Vec<u8>,
}

impl RawSse {
    pub async fn open(addr: SocketAddr, path: &str, recv_buffer: u32) -> RawSse {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(recv_buffer).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        RawSse {
            stream,
            parser: Parser::default(),
            head_done: false,
            pending: Vec::new(),
        }
    }

    /// Every frame until the server closes the connection (chunked
    /// encoding is undone crudely: chunk-size lines are dropped).
    pub async fn read_to_end(&mut self, wait: Duration) -> Vec<Frame> {
        let mut raw = Vec::new();
        tokio::time::timeout(wait, self.stream.read_to_end(&mut raw))
            .await
            .expect("the stream did not end in time")
            .unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        // Remove the chunk framing: "<hex>\r\n<data>\r\n".
        let mut data = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            data.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        self.parser.push(data.as_bytes())
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/v1/ws` with an optional key.
pub async fn ws_connect(addr: SocketAddr, key: Option<&str>) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws
}

pub async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON text frame (answering pings on the way).
pub async fn ws_recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no WebSocket frame in time")
            .expect("the WebSocket ended")
            .expect("a WebSocket error");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next reply (`ack`, `error`…), skipping `event` frames: an `all`
/// subscription made "from now on" may still get an event committed just
/// before it on PostgreSQL, whose log is read below the horizon of the
/// transactions still open (another test's, on the same server).
pub async fn ws_recv_reply(ws: &mut Ws) -> Value {
    loop {
        let v = ws_recv(ws).await;
        if v["type"] != "event" {
            return v;
        }
    }
}

/// The next frame that is not an `event`... or is: frames of `type`.
pub async fn ws_recv_type(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let v = ws_recv(ws).await;
        if v["type"] == ty {
            return v;
        }
    }
}
