// W3C Trace Context and OpenTelemetry (issue 17) against a real server:
// what each ingress takes, what a worker and a webhook get, and the spans
// an OTLP collector receives. Included by the `api` binaries (one per
// store). The collector is the test's own receiver on 127.0.0.1.

mod trace {
    use super::common::TestServer;
    use super::common::hooks::{received, receiver};
    use super::common::streams::{ws_connect, ws_recv_type, ws_send};
    use reqwest::Method;
    use serde_json::{Value, json};
    use std::collections::HashMap;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SUBMITTER_SPAN: &str = "00f067aa0ba902b7";
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    async fn submit(s: &TestServer, headers: &[(&str, &str)], body: Value) -> Value {
        let mut hs = vec![("content-type", "application/json")];
        hs.extend_from_slice(headers);
        let r = s
            .client(None)
            .send(
                Method::POST,
                "/v1/jobs",
                &hs,
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// The next lease of `queue`: the whole answer.
    async fn lease(s: &TestServer, queue: &str) -> Value {
        let r = s
            .client(None)
            .post(
                &format!("/v1/queues/{queue}/lease"),
                json!({"worker": "w", "lease": 30, "wait": 5}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    #[tokio::test]
    async fn every_ingress_puts_the_job_in_its_submitters_trace() {
        let Some(s) = TestServer::start("[queues.work]\n").await else {
            return;
        };
        // HTTP: both headers, passed on unchanged (no spans of replyd's).
        submit(
            &s,
            &[("traceparent", TRACEPARENT), ("tracestate", "rojo=1"), ("tracestate", "congo=2")],
            json!({"queue": "work", "input": 1}),
        )
        .await;
        let l = lease(&s, "work").await;
        assert_eq!(l["traceparent"], TRACEPARENT, "{l}");
        assert_eq!(l["tracestate"], "rojo=1,congo=2");
        // A malformed traceparent is ignored, not refused.
        submit(
            &s,
            &[("traceparent", "00-not-a-trace-01")],
            json!({"queue": "work", "input": 2}),
        )
        .await;
        let l = lease(&s, "work").await;
        assert!(l.get("traceparent").is_none(), "{l}");
        // None at all: none passed on.
        submit(&s, &[], json!({"queue": "work", "input": 3})).await;
        assert!(lease(&s, "work").await.get("traceparent").is_none());
        // A batch: every job in the call's trace.
        let r = s
            .client(None)
            .send(
                Method::POST,
                "/v1/jobs:batch",
                &[("content-type", "application/json"), ("traceparent", TRACEPARENT)],
                Some(
                    serde_json::to_vec(&json!({"jobs": [
                        {"queue": "work", "input": 4}, {"queue": "work", "input": 5}
                    ]}))
                    .unwrap(),
                ),
            )
            .await;
        assert!(r.status.is_success(), "{}", String::from_utf8_lossy(&r.body));
        for _ in 0..2 {
            assert_eq!(lease(&s, "work").await["traceparent"], TRACEPARENT);
        }
        // A WebSocket submission names its own.
        let mut ws = ws_connect(s.addr, None).await;
        ws_send(
            &mut ws,
            json!({"type": "submit", "ref": 1, "job": {"queue": "work", "input": 6},
                   "traceparent": TRACEPARENT}),
        )
        .await;
        ws_recv_type(&mut ws, "ack").await;
        assert_eq!(lease(&s, "work").await["traceparent"], TRACEPARENT);
    }

    /// The spans the collector got, by name: (span id, parent id, span).
    fn spans(bodies: &[(reqwest::header::HeaderMap, Value)]) -> HashMap<String, Vec<Value>> {
        let mut by_name: HashMap<String, Vec<Value>> = HashMap::new();
        for (_, body) in bodies {
            for rs in body["resourceSpans"].as_array().unwrap() {
                assert_eq!(
                    rs["resource"]["attributes"][0],
                    json!({"key": "service.name", "value": {"stringValue": "replyd"}})
                );
                for ss in rs["scopeSpans"].as_array().unwrap() {
                    for span in ss["spans"].as_array().unwrap() {
                        by_name
                            .entry(span["name"].as_str().unwrap().to_string())
                            .or_default()
                            .push(span.clone());
                    }
                }
            }
        }
        by_name
    }

    /// `traceparent`'s span id.
    fn span_of(traceparent: &str) -> &str {
        traceparent.split('-').nth(2).unwrap()
    }

    /// The span exporter's log reader, waiting for a first event to start
    /// its cursor at, lets a server with no jobs stop at once (it held the
    /// drain for the whole grace period).
    #[tokio::test]
    async fn a_server_exporting_spans_with_no_jobs_stops_at_once() {
        let (base, _got) = receiver().await;
        let config = format!("[queues.work]\n[telemetry]\notlp_endpoint = \"{base}/otlp\"\n");
        let Some(s) = TestServer::start(&config).await else {
            return;
        };
        // Long enough for the reader to take its lease and wait.
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        let asked = std::time::Instant::now();
        s.stop.cancel();
        let _ = s.task.await;
        let took = asked.elapsed();
        assert!(took < std::time::Duration::from_secs(5), "stopped after {took:?}");
    }

    #[tokio::test]
    async fn one_trace_runs_from_the_submitter_through_the_worker_to_the_webhook() {
        let (base, got) = receiver().await;
        let config = format!(
            "[queues.work]\n[webhooks]\nsecret = \"{SECRET}\"\nallow_networks = [\"127.0.0.0/8\"]\n\
             [telemetry]\notlp_endpoint = \"{base}/otlp\"\n"
        );
        let Some(s) = TestServer::start(&config).await else {
            return;
        };
        let job = submit(
            &s,
            &[("traceparent", TRACEPARENT)],
            json!({"queue": "work", "input": 1, "webhook": {"url": format!("{base}/hook")}}),
        )
        .await;
        let id = job["id"].as_str().unwrap();
        let l = lease(&s, "work").await;
        let to_worker = l["traceparent"].as_str().unwrap();
        assert!(to_worker.starts_with(&format!("00-{TRACE_ID}-")), "{to_worker}");
        assert_ne!(span_of(to_worker), SUBMITTER_SPAN, "the worker hangs below replyd's attempt");
        let r = s
            .client(None)
            .complete(id, l["lease_id"].as_str().unwrap(), json!({"ok": true}))
            .await;
        assert_eq!(r.status, 200);
        let hook = received(&got, "/hook", 1).await;
        let to_receiver = hook[0].0["traceparent"].to_str().unwrap().to_string();
        assert!(to_receiver.starts_with(&format!("00-{TRACE_ID}-")));
        // Every span once: wait until all five kinds have come.
        let names = ["replyd.submit", "replyd.queue_wait", "replyd.attempt", "replyd.job", "replyd.deliver"];
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        let by_name = loop {
            let bodies = received(&got, "/otlp/v1/traces", 0).await;
            let by_name = spans(&bodies);
            if names.iter().all(|n| by_name.contains_key(*n)) {
                break by_name;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "spans so far: {:?}",
                by_name.keys().collect::<Vec<_>>()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let one = |name: &str| {
            let all = &by_name[name];
            assert_eq!(all.len(), 1, "{name} exported once: {all:?}");
            let s = all[0].clone();
            assert_eq!(s["traceId"], TRACE_ID, "{name}");
            assert_eq!(
                s["attributes"][0],
                json!({"key": "replyd.job.id", "value": {"stringValue": id}})
            );
            s
        };
        let job_span = one("replyd.job");
        assert_eq!(job_span["parentSpanId"], SUBMITTER_SPAN, "the job hangs below its submitter");
        for name in ["replyd.submit", "replyd.queue_wait", "replyd.attempt", "replyd.deliver"] {
            assert_eq!(one(name)["parentSpanId"], job_span["spanId"], "{name}");
        }
        assert_eq!(one("replyd.attempt")["spanId"], span_of(to_worker));
        assert_eq!(one("replyd.deliver")["spanId"], span_of(&to_receiver));
        assert_eq!(one("replyd.deliver")["kind"], 3, "a webhook is a client call");
        let start = |n: &str| one(n)["startTimeUnixNano"].as_str().unwrap().parse::<u128>().unwrap();
        let end = |n: &str| one(n)["endTimeUnixNano"].as_str().unwrap().parse::<u128>().unwrap();
        assert!(start("replyd.queue_wait") <= end("replyd.queue_wait"));
        assert!(end("replyd.queue_wait") <= start("replyd.attempt") + 1_000_000);
        assert!(start("replyd.job") <= start("replyd.attempt"));
        assert!(end("replyd.attempt") <= end("replyd.job"));
        // A job submitted in no trace starts one of its own.
        let job = submit(&s, &[], json!({"queue": "work", "input": 2})).await;
        let l = lease(&s, "work").await;
        let own = l["traceparent"].as_str().expect("a trace of its own");
        assert!(!own.contains(TRACE_ID));
        assert_eq!(l["job"]["id"], job["id"]);
    }
}
