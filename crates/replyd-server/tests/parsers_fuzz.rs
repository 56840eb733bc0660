//! Issue 12, item 8: a property-based fuzz target for each parser that
//! takes a client's bytes: `Prefer`, `Last-Event-ID`, `Idempotency-Key`, a
//! gateway path, a broker request's and a broker worker's headers, the
//! configuration, and WebSocket frames (the last over a real connection).
//! Each runs a bounded number of cases (proptest), so CI runs them in
//! seconds; each asserts what the parser promises, not only that it does
//! not panic.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use proptest::prelude::*;
use replyd_core::{LeaseId, Tenant};
use replyd_server::brokers::ingress::{Settings, dedupe_key, parse};
use replyd_server::brokers::{Message, Props, headers};

const BACKEND: common::Backend = common::Backend::Sqlite;

/// Header values as a client may send them: near-misses of the valid
/// forms, and any bytes.
fn header_value(valid: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(valid).prop_map(|s| s.as_bytes().to_vec()),
        prop::sample::select(valid).prop_flat_map(|s| {
            (Just(s), 0..s.len().max(1), any::<u8>()).prop_map(|(s, at, b)| {
                let mut v = s.as_bytes().to_vec();
                if at < v.len() {
                    v[at] = b;
                }
                v
            })
        }),
        prop::collection::vec(any::<u8>(), 0..64),
        "[ -~]{0,300}".prop_map(String::into_bytes),
    ]
}

fn headers_with(name: &'static str, value: &[u8]) -> Option<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(name, HeaderValue::from_bytes(value).ok()?);
    Some(h)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// `Prefer: wait=N`: never more than 60 s, a whole number parses to
    /// itself (capped), anything else is 400 or ignored.
    #[test]
    fn prefer(value in header_value(&["wait=5", "wait=0", "respond-async, wait=10", "wait=\"3\"", "handling=lenient"])) {
        let Some(h) = headers_with("prefer", &value) else { return Ok(()) };
        match replyd_server::http::prefer_wait(&h) {
            Ok(Some(d)) => prop_assert!(d <= Duration::from_secs(60), "{d:?}"),
            Ok(None) => {}
            Err(e) => prop_assert_eq!(e.status.as_u16(), 400),
        }
    }

    #[test]
    fn prefer_whole_numbers(n in 0u64..100_000) {
        let h = headers_with("prefer", format!("wait={n}").as_bytes()).unwrap();
        let got = replyd_server::http::prefer_wait(&h).unwrap().unwrap();
        prop_assert_eq!(got, Duration::from_secs(n.min(60)));
    }

    /// `Last-Event-ID`: an id parses to itself; anything else is 400.
    #[test]
    fn last_event_id(value in header_value(&["42", "0", "9223372036854775807", ""]), n in 0i64..i64::MAX) {
        if let Some(h) = headers_with("last-event-id", &value) {
            let sent = String::from_utf8_lossy(&value).trim().to_string();
            match replyd_server::http::events::resume_from(&h, None) {
                Ok(Some(id)) => prop_assert_eq!(Ok(id.to_string()), sent.parse::<i64>().map(|n| n.to_string())),
                Ok(None) => prop_assert!(sent.is_empty()),
                Err(e) => prop_assert_eq!(e.status.as_u16(), 400),
            }
        }
        let h = headers_with("last-event-id", n.to_string().as_bytes()).unwrap();
        let id = replyd_server::http::events::resume_from(&h, None).unwrap().unwrap();
        prop_assert_eq!(id.to_string(), n.to_string());
    }

    /// `Idempotency-Key`: accepted only as 1-255 visible ASCII characters
    /// (a quoted string loses its quotes), and then kept as given.
    #[test]
    fn idempotency_key(raw in prop_oneof!["[ -~]{0,300}", ".{0,40}", "\"[!-~]{1,20}\""]) {
        match replyd_server::app::idempotency_key(&raw) {
            Ok(k) => {
                prop_assert!((1..=255).contains(&k.len()), "{k:?}");
                prop_assert!(k.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
                prop_assert!(raw.contains(&k));
            }
            Err(e) => prop_assert_eq!(e.status.as_u16(), 400),
        }
    }

    /// A gateway path that is accepted never leaves its base when a URL is
    /// made of it (dot-segments, encoded slashes, backslashes).
    #[test]
    fn gateway_paths_stay_under_the_base(
        segments in prop::collection::vec(
            prop_oneof![
                Just(".".to_string()), Just("..".to_string()), Just("%2e".to_string()),
                Just("%2E%2e".to_string()), Just(".%2e".to_string()), Just("%2f".to_string()),
                Just("%5C".to_string()), Just("\\".to_string()), Just("%252e%252e".to_string()),
                Just("".to_string()), "[a-z0-9._~%-]{1,8}",
            ],
            0..6,
        )
    ) {
        let path = format!("/reports/{}", segments.join("/"));
        if replyd_server::executors::http::contained_path(&path).is_ok() {
            let url = url::Url::parse(&format!("http://upstream.test/api{path}")).unwrap();
            prop_assert!(url.path().starts_with("/api/reports"), "{path} became {}", url.path());
        }
    }

    /// A broker request's headers: parsed into a submission or refused
    /// with a reason, never a panic; what is parsed is what was sent.
    #[test]
    fn broker_request_headers(
        body in prop_oneof![
            Just(b"{\"n\":1}".to_vec()), Just(b"null".to_vec()),
            prop::collection::vec(any::<u8>(), 0..64),
        ],
        hs in prop::collection::btree_map(
            prop_oneof![
                Just(headers::QUEUE.to_string()), Just(headers::MAX_ATTEMPTS.to_string()),
                Just(headers::TIMEOUT.to_string()), Just(headers::TTL.to_string()),
                Just(headers::PROGRESS.to_string()), "[a-z-]{1,12}",
            ],
            prop_oneof![
                Just("3".to_string()), Just("true".to_string()), Just("1e309".to_string()),
                Just("-1".to_string()), Just("NaN".to_string()), Just("0.5".to_string()),
                Just("work".to_string()), ".{0,20}",
            ],
            0..6,
        ),
        message_id in prop::option::of(".{0,300}"),
        correlation_id in prop::option::of(".{0,300}"),
    ) {
        let settings = Settings {
            tenant: Tenant("t".into()),
            default_queue: Some("work".into()),
            dead_letter: "dead".into(),
            prefetch: 8,
        };
        let m = Message {
            body: Bytes::from(body),
            props: Props {
                message_id,
                correlation_id,
                headers: hs.clone(),
                ..Props::default()
            },
        };
        match parse(&settings, &m, 4096) {
            Ok(r) => {
                prop_assert_eq!(
                    r.submit.queue.as_str(),
                    hs.get(headers::QUEUE).map_or("work", String::as_str)
                );
                if let Some(n) = r.submit.max_attempts {
                    prop_assert!(n >= 1);
                }
                for v in [r.submit.timeout, r.submit.ttl].into_iter().flatten() {
                    prop_assert!(v.is_finite());
                }
            }
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
        if let Some(key) = dedupe_key(&m.props) {
            prop_assert!(key.len() <= 250, "{} bytes", key.len());
            prop_assert!(key.bytes().all(|b| b.is_ascii_graphic() || b == b' '), "{key:?}");
        }
    }

    /// A broker worker's reply: always a command; a progress report is
    /// 0-100 and its message bounded.
    #[test]
    fn broker_worker_reply_headers(
        state in prop::option::of(prop_oneof![
            Just("failed".to_string()), Just("running".to_string()), Just("succeeded".to_string()), ".{0,12}",
        ]),
        percent in prop::option::of(prop_oneof![Just("50".to_string()), Just("150".to_string()), Just("NaN".to_string()), ".{0,8}"]),
        message in prop::option::of(prop_oneof![".{0,20}", "a{5000}"]),
        body in prop::collection::vec(any::<u8>(), 0..3000),
    ) {
        let mut hs = BTreeMap::new();
        for (k, v) in [(headers::STATE, state), (headers::PERCENT, percent), (headers::MESSAGE, message)] {
            if let Some(v) = v {
                hs.insert(k.to_string(), v);
            }
        }
        let m = Message {
            body: Bytes::from(body),
            props: Props { headers: hs, ..Props::default() },
        };
        let (cmd, output) = replyd_server::brokers::executor::command_of(&m, LeaseId("l".into()), 2048);
        match cmd {
            replyd_core::job::Command::Progress { progress, .. } => {
                if let Some(p) = progress.percent {
                    prop_assert!((0.0..=100.0).contains(&p));
                }
                prop_assert!(progress.message.is_none_or(|m| m.len() <= 4096));
            }
            replyd_core::job::Command::Complete { .. } => {
                prop_assert!(output.is_some_and(|o| o.body.len() <= 2048));
            }
            replyd_core::job::Command::Fail { error, .. } => prop_assert!(error.message.len() <= 1200),
            other => prop_assert!(false, "{other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// The configuration: any document is taken or refused with a message
    /// naming what is wrong; validation never panics.
    #[test]
    fn configuration(doc in config_doc()) {
        match replyd_server::Config::from_toml(&doc) {
            Ok(mut c) => {
                if let Err(e) = c.validate() {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }
}

/// TOML documents of replyd's sections and keys with values of every type.
fn config_doc() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec![
        "",
        "[limits]",
        "[streams]",
        "[webhooks]",
        "[storage]",
        "[queues.a]",
        "[queues.\"b c\"]",
        "[[routes]]",
        "[[api_keys]]",
        "[amqp]",
        "[mqtt]",
        "[nats]",
        "[sqs]",
        "[limits.streams]",
        "[limits.tenants.t]",
    ]);
    let key = prop::sample::select(vec![
        "listen",
        "insecure",
        "max_body",
        "header_timeout",
        "body_timeout",
        "max_connections",
        "max_connections_per_ip",
        "submit_rate",
        "submit_burst",
        "total",
        "per_ip",
        "per_tenant",
        "buffer",
        "keepalive",
        "secret",
        "allow_networks",
        "retry_schedule",
        "proxy",
        "executor",
        "command",
        "url",
        "timeout",
        "ttl",
        "max_attempts",
        "method",
        "path",
        "upstream",
        "key",
        "tenant",
        "role",
        "request_queues",
        "queue",
        "prefetch",
        "bogus",
    ]);
    let value = prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("18446744073709551616".to_string()),
        Just("true".to_string()),
        Just("\"\"".to_string()),
        Just("[]".to_string()),
        Just("[-1, 0.5]".to_string()),
        Just("{}".to_string()),
        Just("\"http://127.0.0.1:1/x\"".to_string()),
        Just("\"pull\"".to_string()),
        Just("\"exec\"".to_string()),
        Just("\"/../x\"".to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        "\"[ -~]{0,20}\"".prop_map(|s| s.replace('\\', "")),
    ];
    prop::collection::vec((section, prop::collection::vec((key, value), 0..4)), 0..5).prop_map(
        |sections| {
            let mut doc = String::new();
            for (s, kvs) in sections {
                doc.push_str(s);
                doc.push('\n');
                for (k, v) in kvs {
                    doc.push_str(&format!("{k} = {v}\n"));
                }
            }
            doc
        },
    )
}

/// WebSocket frames' JSON, over a real connection: each text frame gets
/// one answer (an ack, a pong, an error), and the connection stays open.
#[tokio::test]
async fn websocket_frames_get_an_answer_and_the_connection_stays() {
    use common::TestServer;
    use common::streams::{ws_connect, ws_recv};
    use futures::SinkExt;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let Some(s) = TestServer::start("[queues.work]\n").await else {
        return;
    };
    let mut ws = ws_connect(s.addr, None).await;
    let frame = prop_oneof![
        Just(r#"{"type":"ping","ref":1}"#.to_string()),
        "[ -~]{0,60}",
        (
            prop::sample::select(vec![
                "submit",
                "subscribe",
                "unsubscribe",
                "cancel",
                "ping",
                "nope"
            ]),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "ref",
                    "job",
                    "job_id",
                    "all",
                    "after",
                    "queue",
                    "idempotency_key",
                    "subscribe",
                    "x"
                ]),
                prop_oneof![
                    Just(serde_json::json!(null)),
                    Just(serde_json::json!(true)),
                    Just(serde_json::json!(-1)),
                    Just(serde_json::json!("1")),
                    Just(serde_json::json!({"queue": "work"})),
                    Just(serde_json::json!([1])),
                    Just(serde_json::json!("0199a1b2-0000-7000-8000-000000000000")),
                    ".{0,10}".prop_map(serde_json::Value::from),
                ],
                0..4,
            ),
        )
            .prop_map(|(ty, fields)| {
                let mut o =
                    serde_json::Map::from_iter(fields.into_iter().map(|(k, v)| (k.to_string(), v)));
                o.insert("type".into(), ty.into());
                serde_json::Value::Object(o).to_string()
            }),
    ];
    let mut runner = TestRunner::deterministic();
    for _ in 0..300 {
        let text = frame.new_tree(&mut runner).unwrap().current();
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            text.clone().into(),
        ))
        .await
        .unwrap();
        // Its answer: skip the events a subscription made along the way.
        let answer = loop {
            let v = ws_recv(&mut ws).await;
            if v["type"] != "event" {
                break v;
            }
        };
        let ty = answer["type"].as_str().unwrap_or("");
        assert!(["ack", "pong", "error"].contains(&ty), "{text} → {answer}");
        if ty == "error" {
            let status = answer["error"]["status"].as_u64().unwrap();
            assert!((400..500).contains(&status), "{text} → {answer}");
        }
    }
    // Still open, still answering.
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        r#"{"type":"ping","ref":"end"}"#.into(),
    ))
    .await
    .unwrap();
    loop {
        let v = ws_recv(&mut ws).await;
        if v["type"] == "pong" {
            assert_eq!(v["ref"], "end");
            break;
        }
    }
}
