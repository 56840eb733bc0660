// Live-channel cases (API.md §3 SSE, §4 WebSocket) shared by the `streams`
// test binaries (one per store); included with `include!`, so `BACKEND` and
// `common` come from the includer.

use std::time::Duration;

use common::streams::{RawSse, Sse, ws_connect, ws_recv, ws_recv_reply, ws_send};
use common::{KEYS, PULL_QUEUES, TestServer};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);


fn base(s: &TestServer) -> String {
    format!("http://{}", s.addr)
}

/// Submits to `work` with `key`; returns the job representation.
async fn submit(s: &TestServer, key: Option<&str>, queue: &str) -> Value {
    let r = s
        .client(key)
        .post("/v1/jobs", json!({"queue": queue, "input": {}}))
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Leases `id` (the only job of `queue`), reports progress, completes it.
async fn work_through(s: &TestServer, key: Option<&str>, queue: &str, id: &str, steps: u32) {
    let c = s.client(key);
    let (job, lease) = c.lease(queue).await;
    assert_eq!(job["id"], id);
    for i in 1..=steps {
        let r = c
            .post(
                &format!("/v1/jobs/{id}/progress"),
                json!({"lease_id": lease, "percent": i * 10, "message": format!("step {i}")}),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(c.complete(id, &lease, json!({"done": true})).await.status, 200);
}

fn names(frames: &[common::streams::Frame]) -> Vec<String> {
    frames.iter().map(|f| f.event.clone().unwrap()).collect()
}

fn assert_increasing(ids: &[i64]) {
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing: {ids:?}");
}

#[tokio::test]
async fn sse_replays_history_then_goes_live_until_the_terminal_event() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let job = submit(&s, None, "work").await;
    let id = job["id"].as_str().unwrap().to_string();
    let c = s.client(None);
    let (_, lease) = c.lease("work").await;
    c.post(
        &format!("/v1/jobs/{id}/progress"),
        json!({"lease_id": lease, "percent": 40, "message": "page 4 of 10"}),
    )
    .await;
    // The job token link, as a browser would be handed it: no key needed.
    let events = job["links"]["events"].as_str().unwrap();
    let mut sse = Sse::open(&base(&s), events, None, &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.headers["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    assert_eq!(sse.headers["access-control-allow-origin"], "*");
    let first = sse.next(WAIT).await.unwrap();
    assert_eq!(first.retry, Some(1000), "retry: comes first");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sse.next_event(WAIT).await.unwrap());
    }
    assert_eq!(
        names(&got),
        ["job.accepted", "job.started", "job.progress"]
    );
    assert_eq!(got[2].json()["progress"]["percent"], 40);
    assert_eq!(got[1].json()["state"], "running");
    // Live from here.
    let c2 = c.clone();
    let id2 = id.clone();
    let live = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c2.post(
            &format!("/v1/jobs/{id2}/progress"),
            json!({"lease_id": lease, "percent": 90}),
        )
        .await;
        c2.complete(&id2, &lease, json!({"pages": 10})).await;
    });
    got.extend(sse.until_terminal(WAIT).await);
    live.await.unwrap();
    assert_eq!(
        names(&got),
        ["job.accepted", "job.started", "job.progress", "job.progress", "job.succeeded"]
    );
    let ids: Vec<i64> = got.iter().map(|f| f.id()).collect();
    assert_increasing(&ids);
    let done = got.last().unwrap().json();
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["id"], id.as_str());
    assert!(sse.ends(WAIT).await, "the stream closes after the terminal event");
}

#[tokio::test]
async fn sse_resumes_exactly_and_answers_204_after_the_end() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let job = submit(&s, None, "work").await;
    let id = job["id"].as_str().unwrap().to_string();
    work_through(&s, None, "work", &id, 3).await;
    let path = format!("/v1/jobs/{id}/events");
    let all = Sse::open(&base(&s), &path, None, &[])
        .await
        .until_terminal(WAIT)
        .await;
    assert_eq!(all.len(), 6, "accepted, started, 3 progress, succeeded");
    let ids: Vec<String> = all.iter().map(|f| f.id.clone().unwrap()).collect();

    // Last-Event-ID and ?last_event_id= resume right after that event.
    for (headers, query) in [
        (vec![("last-event-id", ids[1].as_str())], String::new()),
        (vec![], format!("?last_event_id={}", ids[1])),
    ] {
        let mut sse = Sse::open(&base(&s), &format!("{path}{query}"), None, &headers).await;
        let rest = sse.until_terminal(WAIT).await;
        let rest_ids: Vec<String> = rest.iter().map(|f| f.id.clone().unwrap()).collect();
        assert_eq!(rest_ids, ids[2..].to_vec());
    }
    // The header wins over the parameter.
    let mut sse = Sse::open(
        &base(&s),
        &format!("{path}?last_event_id={}", ids[0]),
        None,
        &[("last-event-id", ids[4].as_str())],
    )
    .await;
    assert_eq!(sse.until_terminal(WAIT).await.len(), 1);

    // At or past the terminal event: 204, and EventSource stops.
    for last in [ids[5].clone(), (ids[5].parse::<i64>().unwrap() + 1000).to_string()] {
        let r = s
            .client(None)
            .send(reqwest::Method::GET, &path, &[("last-event-id", &last)], None)
            .await;
        assert_eq!(r.status, 204);
    }
    // A malformed id is 400.
    for bad in ["abc", "-3", "1.5"] {
        s.client(None)
            .send(reqwest::Method::GET, &path, &[("last-event-id", bad)], None)
            .await
            .problem(400);
        s.client(None)
            .get(&format!("{path}?last_event_id={bad}"))
            .await
            .problem(400);
    }
    // Unknown job: 404.
    s.client(None)
        .get(&format!("/v1/jobs/{}/events", uuid::Uuid::now_v7()))
        .await
        .problem(404);
}

#[tokio::test]
async fn sse_all_jobs_streams_are_scoped_by_tenant_and_queue() {
    let Some(s) = TestServer::start(KEYS).await else { return };
    let mut a_work = Sse::open(&base(&s), "/v1/events?queue=work", Some("client-a-key"), &[]).await;
    assert_eq!(a_work.status, 200);
    let mut a_all = Sse::open(&base(&s), "/v1/events", Some("client-a-key"), &[]).await;
    // Make sure both are registered before anything happens.
    a_work.next(WAIT).await.unwrap();
    a_all.next(WAIT).await.unwrap();
    let b_job = submit(&s, Some("client-b-key"), "work").await;
    let a_other = submit(&s, Some("client-a-key"), "other").await;
    let a_job = submit(&s, Some("client-a-key"), "work").await;
    let e = a_work.next_event(WAIT).await.unwrap();
    assert_eq!(e.event.as_deref(), Some("job.accepted"));
    assert_eq!(e.json()["id"], a_job["id"], "only tenant a's work queue");
    let e1 = a_all.next_event(WAIT).await.unwrap();
    let e2 = a_all.next_event(WAIT).await.unwrap();
    assert_eq!(e1.json()["id"], a_other["id"]);
    assert_eq!(e2.json()["id"], a_job["id"]);
    assert!(e1.id() < e2.id());
    let _ = b_job;

    // Resume after e1: a's later events only (the work job's accepted).
    let mut resumed = Sse::open(
        &base(&s),
        &format!("/v1/events?last_event_id={}", e1.id()),
        Some("client-a-key"),
        &[],
    )
    .await;
    let r = resumed.next_event(WAIT).await.unwrap();
    assert_eq!(r.id(), e2.id());

    // Job tokens grant one job: not the all-jobs stream. No key: 401.
    let token = a_job["links"]["self"]
        .as_str()
        .unwrap()
        .split("access_token=")
        .nth(1)
        .unwrap();
    s.client(None)
        .get(&format!("/v1/events?access_token={token}"))
        .await
        .problem(403);
    s.client(None).get("/v1/events").await.problem(401);
    // Another tenant's job stream is a 404.
    let a_id = a_job["id"].as_str().unwrap();
    s.client(Some("client-b-key"))
        .get(&format!("/v1/jobs/{a_id}/events"))
        .await
        .problem(404);
}

#[tokio::test]
async fn sse_says_stream_reset_when_history_was_removed() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    let gone = submit(&s, None, "work").await;
    let gone_id = gone["id"].as_str().unwrap();
    // Everything so far: the id before the job that will be deleted.
    let mut before = Sse::open(&base(&s), &format!("/v1/jobs/{gone_id}/events"), None, &[]).await;
    let first = before.next_event(WAIT).await.unwrap().id();
    drop(before);
    let r = c.post(&format!("/v1/jobs/{gone_id}/cancel"), json!({})).await;
    assert_eq!(r.status, 200);
    let r = c
        .send(reqwest::Method::DELETE, &format!("/v1/jobs/{gone_id}"), &[], None)
        .await;
    assert_eq!(r.status, 204);
    let kept = submit(&s, None, "work").await;

    // Resuming from before the deleted job's events: stream.reset first,
    // then what is retained.
    let mut sse = Sse::open(
        &base(&s),
        &format!("/v1/events?last_event_id={}", first - 1),
        None,
        &[],
    )
    .await;
    let reset = sse.next_event(WAIT).await.unwrap();
    assert_eq!(reset.event.as_deref(), Some("stream.reset"));
    assert_eq!(reset.id, None, "a reset carries no id: Last-Event-ID stays");
    let next = sse.next_event(WAIT).await.unwrap();
    assert_eq!(next.json()["id"], kept["id"]);
    // Resuming after the removed events: no reset.
    let last = next.id();
    let mut sse = Sse::open(
        &base(&s),
        &format!("/v1/events?last_event_id={last}"),
        None,
        &[],
    )
    .await;
    let later = submit(&s, None, "work").await;
    let e = sse.next_event(WAIT).await.unwrap();
    assert_eq!(e.event.as_deref(), Some("job.accepted"));
    assert_eq!(e.json()["id"], later["id"]);
}

#[tokio::test]
async fn sse_sends_keep_alive_comments_on_a_quiet_stream() {
    let config = format!("{PULL_QUEUES}\n[streams]\nkeepalive = 0.2\nretry_ms = 250\n");
    let Some(s) = TestServer::start(&config).await else { return };
    let job = submit(&s, None, "work").await;
    let id = job["id"].as_str().unwrap();
    let mut sse = Sse::open(&base(&s), &format!("/v1/jobs/{id}/events"), None, &[]).await;
    assert_eq!(sse.next(WAIT).await.unwrap().retry, Some(250));
    assert_eq!(
        sse.next_event(WAIT).await.unwrap().event.as_deref(),
        Some("job.accepted")
    );
    let start = tokio::time::Instant::now();
    let mut comments = 0;
    while comments < 3 {
        let f = sse.next(Duration::from_secs(2)).await.unwrap();
        assert!(!f.is_event());
        if f.comments.iter().any(|c| c == "keep-alive") {
            comments += 1;
        }
    }
    assert!(start.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn a_slow_sse_reader_is_cut_off_and_resumes_without_loss() {
    let config = format!("{PULL_QUEUES}\n[streams]\nbuffer = 8\n");
    let Some(s) = TestServer::start(&config).await else { return };
    let job = submit(&s, None, "work").await;
    let id = job["id"].as_str().unwrap().to_string();
    let c = s.client(None);
    let (_, lease) = c.lease("work").await;
    // A client that reads nothing while a lot happens.
    let mut raw = RawSse::open(s.addr, &format!("/v1/jobs/{id}/events"), 4096).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let message = "x".repeat(4000);
    let mut posters = Vec::new();
    for p in 0..8 {
        let (c, id, lease, message) = (c.clone(), id.clone(), lease.clone(), message.clone());
        posters.push(tokio::spawn(async move {
            for i in 0..250 {
                let r = c
                    .post(
                        &format!("/v1/jobs/{id}/progress"),
                        json!({"lease_id": lease, "percent": 1, "message": format!("{p}-{i} {message}")}),
                    )
                    .await;
                assert_eq!(r.status, 200);
            }
        }));
    }
    for p in posters {
        p.await.unwrap();
    }
    c.complete(&id, &lease, json!(1)).await;
    // Now read: what was buffered, then the overflow notice, then the end.
    let frames = raw.read_to_end(Duration::from_secs(30)).await;
    let events: Vec<_> = frames.iter().filter(|f| f.is_event()).collect();
    let last = events.last().unwrap();
    assert_eq!(
        last.event.as_deref(),
        Some("stream.overflow"),
        "the server says why it closed"
    );
    let seen: Vec<i64> = events.iter().filter_map(|f| f.id.as_ref()).map(|i| i.parse().unwrap()).collect();
    assert_increasing(&seen);
    assert!(seen.len() < 2003, "the reader was cut off before the end");
    // Resume from the last id seen: the rest, no gap, no duplicate.
    let mut sse = Sse::open(
        &base(&s),
        &format!("/v1/jobs/{id}/events"),
        None,
        &[("last-event-id", &seen.last().unwrap().to_string())],
    )
    .await;
    let rest = sse.until_terminal(Duration::from_secs(30)).await;
    let mut all = seen.clone();
    all.extend(rest.iter().map(|f| f.id()));
    let full: Vec<i64> = Sse::open(&base(&s), &format!("/v1/jobs/{id}/events"), None, &[])
        .await
        .until_terminal(Duration::from_secs(30))
        .await
        .iter()
        .map(|f| f.id())
        .collect();
    assert_eq!(full.len(), 2003, "accepted, started, 2000 progress, succeeded");
    assert_eq!(all, full);
}

#[tokio::test]
async fn ws_submits_subscribes_and_cancels_with_the_ids_of_sse() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let mut ws = ws_connect(s.addr, None).await;
    ws_send(&mut ws, json!({"type": "ping", "ref": "p"})).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"type": "pong", "ref": "p"}));

    ws_send(
        &mut ws,
        json!({"type": "submit", "ref": 1, "job": {"queue": "work", "input": {"n": 1}}, "subscribe": true}),
    )
    .await;
    let ack = ws_recv(&mut ws).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["ref"], 1);
    assert_eq!(ack["job"]["state"], "queued");
    let id = ack["job"]["id"].as_str().unwrap().to_string();
    let sub_ack = ws_recv(&mut ws).await;
    assert_eq!(sub_ack, json!({"type": "ack", "ref": 1}));
    let accepted = ws_recv(&mut ws).await;
    assert_eq!(accepted["type"], "event");
    assert_eq!(accepted["event"], "job.accepted");
    assert_eq!(accepted["ref"], 1);

    let c = s.client(None);
    let (_, lease) = c.lease("work").await;
    c.post(
        &format!("/v1/jobs/{id}/progress"),
        json!({"lease_id": lease, "percent": 50}),
    )
    .await;
    let started = ws_recv(&mut ws).await;
    assert_eq!(started["event"], "job.started");
    let progress = ws_recv(&mut ws).await;
    assert_eq!(progress["event"], "job.progress");
    assert_eq!(progress["job"]["progress"]["percent"], 50);

    ws_send(&mut ws, json!({"type": "cancel", "ref": "c", "job_id": id})).await;
    let mut frames = [ws_recv(&mut ws).await, ws_recv(&mut ws).await];
    frames.sort_by_key(|f| f["type"].as_str().unwrap().to_string());
    assert_eq!(frames[0]["type"], "ack");
    assert_eq!(frames[0]["ref"], "c");
    assert_eq!(frames[0]["job"]["cancel_requested"], true);
    assert_eq!(frames[1]["event"], "job.cancel_requested");
    // The worker learns it and the job ends canceled.
    let r = c
        .post(&format!("/v1/jobs/{id}/complete"), json!({"lease_id": lease, "result": 1}))
        .await;
    assert_eq!(r.status, 409);
    let canceled = ws_recv(&mut ws).await;
    assert_eq!(canceled["event"], "job.canceled");

    // The same ids and names as the SSE stream of the job.
    let sse = Sse::open(&base(&s), &format!("/v1/jobs/{id}/events"), None, &[])
        .await
        .until_terminal(WAIT)
        .await;
    let sse_ids: Vec<(i64, String)> = sse.iter().map(|f| (f.id(), f.event.clone().unwrap())).collect();
    let ws_ids: Vec<(i64, String)> = [&accepted, &started, &progress, &frames[1], &canceled]
        .iter()
        .map(|f| (f["id"].as_i64().unwrap(), f["event"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(ws_ids, sse_ids);

    // Subscribing again with `after` resumes after that id.
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "ref": "again", "job_id": id, "after": progress["id"]}),
    )
    .await;
    assert_eq!(ws_recv(&mut ws).await["type"], "ack");
    let e = ws_recv(&mut ws).await;
    assert_eq!(e["event"], "job.cancel_requested");
    assert_eq!(e["ref"], "again");
    assert_eq!(ws_recv(&mut ws).await["event"], "job.canceled");
    // An idempotent resubmission over WebSocket is the same job.
    for _ in 0..2 {
        ws_send(
            &mut ws,
            json!({"type": "submit", "ref": "k", "idempotency_key": "ws-1", "job": {"queue": "work"}}),
        )
        .await;
    }
    let (k1, k2) = (ws_recv(&mut ws).await, ws_recv(&mut ws).await);
    assert_eq!(k1["job"]["id"], k2["job"]["id"]);
    assert_eq!(k2["replayed"], true);
}

#[tokio::test]
async fn ws_bad_frames_get_errors_and_the_connection_stays() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let mut ws = ws_connect(s.addr, None).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let cases: Vec<(Message, u16)> = vec![
        (Message::Text("not json".into()), 400),
        (Message::Text(r#"{"type":"nope","ref":7}"#.into()), 400),
        (Message::Text(r#"{"ref":8}"#.into()), 400),
        (Message::Text(r#"[1,2]"#.into()), 400),
        (Message::Binary(vec![1, 2, 3].into()), 400),
        (Message::Text(r#"{"type":"subscribe","ref":9}"#.into()), 400),
        (Message::Text(r#"{"type":"subscribe","ref":9,"job_id":"x","all":true}"#.into()), 400),
        (Message::Text(format!(r#"{{"type":"subscribe","ref":10,"job_id":"{unknown}"}}"#).into()), 404),
        (Message::Text(r#"{"type":"subscribe","ref":11,"all":true,"after":-1}"#.into()), 400),
        (Message::Text(r#"{"type":"submit","ref":12,"job":{"queue":"nope"}}"#.into()), 404),
        (Message::Text(r#"{"type":"submit","ref":13,"job":{"input":1}}"#.into()), 400),
        (Message::Text(r#"{"type":"submit","ref":13,"job":{"queue":"work"},"idempotency_key":""}"#.into()), 400),
        (Message::Text(format!(r#"{{"type":"cancel","ref":14,"job_id":"{unknown}"}}"#).into()), 404),
        (Message::Text(format!(r#"{{"type":"unsubscribe","ref":15,"job_id":"{unknown}"}}"#).into()), 404),
    ];
    for (msg, status) in cases {
        let shown = format!("{msg:?}");
        ws.send(msg).await.unwrap();
        let e = ws_recv(&mut ws).await;
        assert_eq!(e["type"], "error", "{shown}");
        assert_eq!(e["error"]["status"], status, "{shown}: {e}");
        assert!(e["error"]["type"].as_str().unwrap().starts_with("urn:replyd:problem:"));
        if shown.contains("\"ref\":7") {
            assert_eq!(e["ref"], 7, "the ref is echoed even for an unknown type");
        }
    }
    // Still open.
    ws_send(&mut ws, json!({"type": "ping", "ref": 1})).await;
    assert_eq!(ws_recv(&mut ws).await["type"], "pong");

    // An oversized frame closes the connection with 1009.
    let huge = "x".repeat(1024 * 1024 + 32 * 1024);
    let _ = ws.send(Message::Text(huge.into())).await;
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.unwrap().code), 1009);
}

#[tokio::test]
async fn ws_limits_subscriptions_and_drops_peers_that_do_not_answer_pings() {
    let config = format!("{PULL_QUEUES}\n[streams]\nmax_subscriptions = 2\nping_interval = 0.2\n");
    let Some(s) = TestServer::start(&config).await else { return };
    let mut ws = ws_connect(s.addr, None).await;
    let a = submit(&s, None, "work").await;
    for i in 0..2 {
        let frame = if i == 0 {
            json!({"type": "subscribe", "ref": i, "job_id": a["id"]})
        } else {
            json!({"type": "subscribe", "ref": i, "all": true})
        };
        ws_send(&mut ws, frame).await;
        assert_eq!(ws_recv_reply(&mut ws).await["type"], "ack");
        if i == 0 {
            assert_eq!(ws_recv(&mut ws).await["event"], "job.accepted");
        }
    }
    ws_send(&mut ws, json!({"type": "subscribe", "ref": 3, "all": true})).await;
    let e = ws_recv_reply(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["status"], 429);
    // Unsubscribing frees a slot.
    ws_send(&mut ws, json!({"type": "unsubscribe", "ref": 4, "all": true})).await;
    assert_eq!(ws_recv_reply(&mut ws).await, json!({"type": "ack", "ref": 4}));
    ws_send(&mut ws, json!({"type": "subscribe", "ref": 5, "all": true})).await;
    assert_eq!(ws_recv_reply(&mut ws).await, json!({"type": "ack", "ref": 5}));

    // A peer that reads (tungstenite answers pings as it reads) stays...
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    let mut pings = 0;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(Ok(Message::Ping(_)))) =
            tokio::time::timeout_at(deadline, ws.next()).await
        {
            pings += 1;
        }
    }
    assert!(pings >= 3, "pings every 0.2 s: {pings}");
    ws_send(&mut ws, json!({"type": "ping", "ref": "alive"})).await;
    assert_eq!(ws_recv(&mut ws).await["ref"], "alive");

    // ...one that does not is dropped after two unanswered pings.
    let mut silent = ws_connect(s.addr, None).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut closed = None;
    while let Ok(Some(m)) = tokio::time::timeout(WAIT, silent.next()).await {
        match m {
            Ok(Message::Close(frame)) => {
                closed = frame;
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    let frame = closed.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    assert!(frame.reason.contains("ping"), "{}", frame.reason);
}

#[tokio::test]
async fn ws_is_authenticated_and_tenant_scoped() {
    let Some(s) = TestServer::start(KEYS).await else { return };
    // No credentials: the upgrade itself is refused.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", s.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let a_job = submit(&s, Some("client-a-key"), "work").await;
    let a_id = a_job["id"].as_str().unwrap();
    let mut b = ws_connect(s.addr, Some("client-b-key")).await;
    ws_send(&mut b, json!({"type": "subscribe", "ref": 1, "job_id": a_id})).await;
    assert_eq!(ws_recv(&mut b).await["error"]["status"], 404);
    ws_send(&mut b, json!({"type": "cancel", "ref": 2, "job_id": a_id})).await;
    assert_eq!(ws_recv(&mut b).await["error"]["status"], 404);
    ws_send(&mut b, json!({"type": "subscribe", "ref": 3, "all": true})).await;
    assert_eq!(ws_recv(&mut b).await["type"], "ack");

    // A job token (as ?access_token=) may follow and cancel its own job only.
    let token = a_job["links"]["self"]
        .as_str()
        .unwrap()
        .split("access_token=")
        .nth(1)
        .unwrap()
        .to_string();
    let (mut t, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?access_token={token}", s.addr))
            .await
            .unwrap();
    ws_send(&mut t, json!({"type": "subscribe", "ref": 1, "job_id": a_id})).await;
    assert_eq!(ws_recv(&mut t).await["type"], "ack");
    assert_eq!(ws_recv(&mut t).await["event"], "job.accepted");
    ws_send(&mut t, json!({"type": "subscribe", "ref": 2, "all": true})).await;
    assert_eq!(ws_recv(&mut t).await["error"]["status"], 403);
    ws_send(&mut t, json!({"type": "submit", "ref": 3, "job": {"queue": "work"}})).await;
    assert_eq!(ws_recv(&mut t).await["error"]["status"], 403);
    let other = submit(&s, Some("client-a-key"), "work").await;
    ws_send(&mut t, json!({"type": "cancel", "ref": 4, "job_id": other["id"]})).await;
    assert_eq!(ws_recv(&mut t).await["error"]["status"], 404);
    ws_send(&mut t, json!({"type": "cancel", "ref": 5, "job_id": a_id})).await;
    let mut frames = [ws_recv(&mut t).await, ws_recv(&mut t).await];
    frames.sort_by_key(|f| f["type"].as_str().unwrap().to_string());
    assert_eq!(frames[0]["type"], "ack");
    assert_eq!(frames[0]["job"]["state"], "canceled");
    assert_eq!(frames[1]["event"], "job.canceled");

    // b's all-jobs subscription saw none of a's events: its next frame is
    // about its own job.
    let b_job = submit(&s, Some("client-b-key"), "other").await;
    let e = ws_recv(&mut b).await;
    assert_eq!(e["event"], "job.accepted");
    assert_eq!(e["job"]["id"], b_job["id"]);
}

#[tokio::test]
async fn a_slow_ws_reader_is_closed_and_resumes_without_loss() {
    let config = format!("{PULL_QUEUES}\n[streams]\nbuffer = 8\n");
    let Some(s) = TestServer::start(&config).await else { return };
    let job = submit(&s, None, "work").await;
    let id = job["id"].as_str().unwrap().to_string();
    let c = s.client(None);
    let (_, lease) = c.lease("work").await;
    // A WebSocket on a socket with a tiny receive buffer that reads nothing
    // for a while.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(s.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/v1/ws", s.addr), tcp)
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"type": "subscribe", "ref": "s", "job_id": id}).to_string().into(),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let message = "y".repeat(4000);
    for i in 0..1500 {
        let r = c
            .post(
                &format!("/v1/jobs/{id}/progress"),
                json!({"lease_id": lease, "percent": 1, "message": format!("{i} {message}")}),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    c.complete(&id, &lease, json!(1)).await;
    let mut seen = Vec::new();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "event" {
                    seen.push(v["id"].as_i64().unwrap());
                }
            }
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.unwrap();
    assert_eq!(u16::from(close.code), 1008, "{}", close.reason);
    assert!(close.reason.contains("slow"));
    assert_increasing(&seen);
    assert!(seen.len() < 1503);
    // Resume with `after` on a new connection.
    let mut ws = ws_connect(s.addr, None).await;
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "ref": "r", "job_id": id, "after": seen.last().unwrap()}),
    )
    .await;
    assert_eq!(ws_recv(&mut ws).await["type"], "ack");
    loop {
        let e = ws_recv(&mut ws).await;
        seen.push(e["id"].as_i64().unwrap());
        if e["event"] == "job.succeeded" {
            break;
        }
    }
    assert_increasing(&seen);
    assert_eq!(seen.len(), 1503, "accepted, started, 1500 progress, succeeded");
}

#[tokio::test]
async fn shutdown_ends_streams_and_websockets_promptly() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let job = submit(&s, None, "work").await;
    let id = job["id"].as_str().unwrap();
    let mut sse = Sse::open(&base(&s), &format!("/v1/jobs/{id}/events"), None, &[]).await;
    assert_eq!(
        sse.next_event(WAIT).await.unwrap().event.as_deref(),
        Some("job.accepted")
    );
    let mut ws = ws_connect(s.addr, None).await;
    ws_send(&mut ws, json!({"type": "subscribe", "ref": 1, "all": true})).await;
    assert_eq!(ws_recv(&mut ws).await["type"], "ack");
    s.stop.cancel();
    assert!(sse.ends(WAIT).await);
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1001);
    drop(ws);
    // Well within the 10 s grace: the streams did not hold the drain up.
    tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .expect("the server drained")
        .unwrap();
}

#[tokio::test]
async fn a_connection_that_sent_nothing_does_not_hold_up_shutdown() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    // Connected, silent (not one byte of a request).
    let silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop.cancel();
    // Well within the 10 s grace (and the 30 s header deadline).
    tokio::time::timeout(Duration::from_secs(3), s.task)
        .await
        .expect("the server drained")
        .unwrap();
    drop(silent);
}

/// Appends `n` tokens to job `id`'s output under `lease`, a few ms apart:
/// the text appended.
async fn append_tokens(s: &TestServer, id: &str, lease: &str, n: usize) -> String {
    let c = s.client(None);
    let mut all = String::new();
    for i in 0..n {
        let tok = format!("tok{i} ");
        all.push_str(&tok);
        let r = c
            .send(
                reqwest::Method::POST,
                &format!("/v1/jobs/{id}/output"),
                &[("lease-id", lease), ("content-type", "text/plain")],
                Some(tok.into_bytes()),
            )
            .await;
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    all
}

/// The `job.output` events of `frames`: (id, offset, next_offset, text).
fn outputs(frames: &[common::streams::Frame]) -> Vec<(i64, String, String, String)> {
    frames
        .iter()
        .filter(|f| f.event.as_deref() == Some("job.output"))
        .map(|f| {
            let o = &f.json()["output"];
            (
                f.id(),
                o["offset"].as_str().unwrap().to_string(),
                o["next_offset"].as_str().unwrap().to_string(),
                o["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A job's output is on its event streams as `job.output` events: a few
/// for many appends, each with its part inline and contiguous with the one
/// before, all before the terminal event; a resume from one of them goes
/// on exactly after it; polling shows how much there is; a WebSocket
/// subscription has the same events with the same ids.
#[tokio::test]
async fn a_jobs_output_is_on_its_event_streams_in_few_events() {
    let config = format!("{PULL_QUEUES}\n[durable_streams]\noutput_events = 0.1\n");
    let Some(s) = TestServer::start(&config).await else { return };
    let job = submit(&s, None, "work").await;
    let id = job["id"].as_str().unwrap().to_string();
    let c = s.client(None);
    let (_, lease) = c.lease("work").await;
    let mut sse = Sse::open(&base(&s), &format!("/v1/jobs/{id}/events"), None, &[]).await;
    let want = append_tokens(&s, &id, &lease, 60).await;
    assert_eq!(c.complete(&id, &lease, json!({"ok": true})).await.status, 200);
    let frames = sse.until_terminal(WAIT).await;
    let seen = names(&frames);
    assert_eq!(seen.last().map(String::as_str), Some("job.succeeded"), "{seen:?}");
    let outs = outputs(&frames);
    let text: String = outs.iter().map(|o| o.3.as_str()).collect();
    assert_eq!(text, want, "every byte, in order, once");
    assert!(
        (2..30).contains(&outs.len()),
        "60 appends over 300+ ms, announced every 100 ms: {} events",
        outs.len()
    );
    assert_eq!(outs[0].1, format!("{:016}_{:016}", 0, 0));
    for w in outs.windows(2) {
        assert_eq!(w[0].2, w[1].1, "each part starts where the last ended");
    }
    assert_eq!(outs.last().unwrap().2, format!("{:016}_{:016}", 0, want.len()));
    // Polling: how much output there is.
    let polled = c.get(&format!("/v1/jobs/{id}")).await.json();
    assert_eq!(polled["output"]["bytes"], want.len() as u64, "{polled}");
    // A resume after the first part: the rest, exactly.
    let first = &outs[0];
    let mut again = Sse::open(
        &base(&s),
        &format!("/v1/jobs/{id}/events"),
        None,
        &[("last-event-id", &first.0.to_string())],
    )
    .await;
    let rest: String = outputs(&again.until_terminal(WAIT).await)
        .iter()
        .map(|o| o.3.clone())
        .collect();
    assert_eq!(format!("{}{rest}", first.3), want);
    // The WebSocket: the same events, the same ids.
    let mut ws = ws_connect(s.addr, None).await;
    ws_send(&mut ws, json!({"type": "subscribe", "ref": 1, "job_id": id})).await;
    assert_eq!(ws_recv(&mut ws).await["type"], "ack");
    let mut ws_outs = Vec::new();
    loop {
        let e = ws_recv(&mut ws).await;
        if e["event"] == "job.output" {
            let text = e["job"]["output"]["text"].as_str().unwrap().to_string();
            ws_outs.push((e["id"].as_i64().unwrap(), text));
        }
        if e["event"] == "job.succeeded" {
            break;
        }
    }
    let sse_outs: Vec<(i64, String)> = outs.iter().map(|o| (o.0, o.3.clone())).collect();
    assert_eq!(ws_outs, sse_outs);
}

/// However long the announcements' interval, the end of an attempt
/// announces its output first: one `job.output` event with all of it, just
/// before the terminal event. A job with no output has no such event.
#[tokio::test]
async fn an_attempts_end_announces_its_output_first() {
    let config = format!("{PULL_QUEUES}\n[durable_streams]\noutput_events = 3600\n");
    let Some(s) = TestServer::start(&config).await else { return };
    let c = s.client(None);
    let job = submit(&s, None, "work").await;
    let id = job["id"].as_str().unwrap().to_string();
    let (_, lease) = c.lease("work").await;
    let want = append_tokens(&s, &id, &lease, 10).await;
    let r = c
        .post(
            &format!("/v1/jobs/{id}/fail"),
            json!({"lease_id": lease, "error": {"code": "x", "message": "no more"}, "retry": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut sse = Sse::open(&base(&s), &format!("/v1/jobs/{id}/events"), None, &[]).await;
    let frames = sse.until_terminal(WAIT).await;
    let seen = names(&frames);
    assert_eq!(
        seen[seen.len() - 2..],
        ["job.output".to_string(), "job.failed".to_string()],
        "{seen:?}"
    );
    let outs = outputs(&frames);
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].3, want);

    let other = submit(&s, None, "work").await;
    let other_id = other["id"].as_str().unwrap().to_string();
    work_through(&s, None, "work", &other_id, 1).await;
    let mut sse = Sse::open(&base(&s), &format!("/v1/jobs/{other_id}/events"), None, &[]).await;
    let names = names(&sse.until_terminal(WAIT).await);
    assert!(!names.iter().any(|n| n == "job.output"), "{names:?}");
}
