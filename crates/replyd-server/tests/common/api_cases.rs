// Test cases shared by the `api` test binaries (one per store);
// included with `include!`, so `BACKEND` and `common` come from the includer.


use std::time::{Duration, Instant};

use common::{KEYS, PULL_QUEUES, TestServer};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn submit_poll_progress_then_303_to_the_result() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    let r = c
        .post("/v1/jobs", json!({"queue": "work", "input": {"pages": 10}}))
        .await;
    assert_eq!(r.status, 202);
    let job = r.json();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("location").unwrap(), format!("/v1/jobs/{id}"));
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&ra));
    assert_eq!(job["state"], "queued");
    assert_eq!(job["attempt"], 0);
    assert!(
        job["links"]["self"]
            .as_str()
            .unwrap()
            .contains("access_token=jt_")
    );

    let r = c.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.status, 202);
    assert!(r.header("retry-after").is_some());
    let etag = r.header("etag").unwrap();

    let (leased, lease) = c.lease("work").await;
    assert_eq!(leased["id"], id.as_str());
    assert_eq!(leased["input"], json!({"pages": 10}));
    assert_eq!(leased["state"], "running");
    let r = c
        .post(
            &format!("/v1/jobs/{id}/progress"),
            json!({"lease_id": lease, "percent": 40, "message": "page 4 of 10"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["cancel_requested"], false);
    let r = c.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.status, 202);
    assert_ne!(r.header("etag").unwrap(), etag);
    assert_eq!(
        r.json()["progress"],
        json!({"percent": 40, "message": "page 4 of 10"})
    );

    let r = c.complete(&id, &lease, json!({"url": "/r.pdf"})).await;
    assert_eq!(r.status, 200);
    let r = c.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location").unwrap(),
        format!("/v1/jobs/{id}/result")
    );
    assert_eq!(r.json()["state"], "succeeded");
    let r = c.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").unwrap(), "application/json");
    assert_eq!(r.json(), json!({"url": "/r.pdf"}));
}

#[tokio::test]
async fn the_demo_queue_runs_in_process_with_progress() {
    let Some(s) = TestServer::start("").await else { return };
    let c = s.client(None);
    let id = c.submit("demo", json!({"seconds": 2})).await;
    let running = c.wait_state(&id, "running").await;
    assert_eq!(running["attempt"], 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_progress = false;
    loop {
        let v = c.get(&format!("/v1/jobs/{id}")).await.json();
        saw_progress |= v["progress"]["percent"].as_f64().is_some_and(|p| p > 0.0);
        if v["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "demo job did not finish: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_progress, "the demo job reported no progress");
    let r = c.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(r.json()["input"], json!({"seconds": 2}));
}

#[tokio::test]
async fn raw_results_keep_their_content_type() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    let id = c.submit("work", json!(null)).await;
    let (_, lease) = c.lease("work").await;
    let png = b"\x89PNG\r\n\x1a\n\0\0".to_vec();
    let r = c
        .send(
            Method::POST,
            &format!("/v1/jobs/{id}/complete"),
            &[("content-type", "image/png"), ("replyd-lease-id", &lease)],
            Some(png.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = c.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").unwrap(), "image/png");
    assert_eq!(r.body.to_vec(), png);
}

#[tokio::test]
async fn result_answers_409_404_and_unknown_ids_are_404() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    let id = c.submit("work", json!({})).await;
    let p = c.get(&format!("/v1/jobs/{id}/result")).await.problem(409);
    assert!(p["detail"].as_str().unwrap().contains("queued"));
    let (_, lease) = c.lease("work").await;
    let r = c
        .post(
            &format!("/v1/jobs/{id}/fail"),
            json!({"lease_id": lease, "error": "disk full", "retry": false}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = c.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "failed");
    assert_eq!(r.json()["error"]["message"], "disk full");
    let p = c.get(&format!("/v1/jobs/{id}/result")).await.problem(409);
    assert!(p["detail"].as_str().unwrap().contains("failed"));
    let unknown = "01930000-0000-7000-8000-000000000000";
    c.get(&format!("/v1/jobs/{unknown}")).await.problem(404);
    c.get(&format!("/v1/jobs/{unknown}/result"))
        .await
        .problem(404);
    for bad in ["nope", "1", "01930000000070008000000000000000", "%00"] {
        c.get(&format!("/v1/jobs/{bad}")).await.problem(404);
    }
}

#[tokio::test]
async fn fail_with_retry_requeues_until_max_attempts() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    let id = c.submit("work", json!({})).await; // max_attempts = 2
    for attempt in 1..=2 {
        let (job, lease) = c.lease("work").await;
        assert_eq!(job["attempt"], attempt);
        let r = c
            .post(
                &format!("/v1/jobs/{id}/fail"),
                json!({"lease_id": lease, "error": {"code": "flaky", "message": "try again"}, "retry": true}),
            )
            .await;
        assert_eq!(r.status, 200);
        let state = r.json()["state"].as_str().unwrap().to_string();
        assert_eq!(state, if attempt == 1 { "queued" } else { "failed" });
    }
    let v = c.get(&format!("/v1/jobs/{id}")).await.json();
    assert_eq!(v["error"]["code"], "flaky");
}

#[tokio::test]
async fn cancel_queued_and_running_jobs() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    let queued = c.submit("other", json!({})).await;
    let r = c
        .post(&format!("/v1/jobs/{queued}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "canceled");
    assert_eq!(r.json()["error"]["code"], "canceled");
    let r = c.get(&format!("/v1/jobs/{queued}")).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["state"].clone()),
        (200, json!("canceled"))
    );
    c.post(&format!("/v1/jobs/{queued}/cancel"), json!({}))
        .await
        .problem(409);

    let running = c.submit("work", json!({})).await;
    let (_, lease) = c.lease("work").await;
    let r = c
        .post(&format!("/v1/jobs/{running}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["cancel_requested"], true);
    let r = c
        .post(
            &format!("/v1/jobs/{running}/heartbeat"),
            json!({"lease_id": lease}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["cancel_requested"],
        true,
        "the worker learns of the cancel"
    );
    let p = c.complete(&running, &lease, json!(1)).await.problem(409);
    assert!(p["detail"].as_str().unwrap().contains("canceled"));
    assert_eq!(c.state(&running).await, "canceled");
}

#[tokio::test]
async fn stale_leases_are_fenced_off() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    let id = c.submit("work", json!({})).await;
    let (_, lease) = c.lease("work").await;
    let p = c
        .complete(&id, "not-the-lease", json!(1))
        .await
        .problem(409);
    assert_eq!(p["type"], "urn:replyd:problem:lease-lost");
    c.post(
        &format!("/v1/jobs/{id}/heartbeat"),
        json!({"lease_id": "stale"}),
    )
    .await
    .problem(409);
    assert_eq!(c.complete(&id, &lease, json!(1)).await.status, 200);
    // A finished job refuses further worker calls.
    c.complete(&id, &lease, json!(2)).await.problem(409);
}

#[tokio::test]
async fn delete_removes_finished_jobs_only() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    let id = c.submit("work", json!({})).await;
    let r = c
        .send(Method::DELETE, &format!("/v1/jobs/{id}"), &[], None)
        .await;
    r.problem(409);
    let (_, lease) = c.lease("work").await;
    c.complete(&id, &lease, json!(1)).await;
    let r = c
        .send(Method::DELETE, &format!("/v1/jobs/{id}"), &[], None)
        .await;
    assert_eq!(r.status, 204);
    c.get(&format!("/v1/jobs/{id}")).await.problem(404);
    c.get(&format!("/v1/jobs/{id}/result")).await.problem(404);
}

#[tokio::test]
async fn list_pages_with_a_cursor_and_filters() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            c.submit(if i % 2 == 0 { "work" } else { "other" }, json!(i))
                .await,
        );
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = c.get(&format!("/v1/jobs?limit=2&cursor={cursor}")).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        seen.extend(
            v["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string()),
        );
        match v["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");
    let v = c.get("/v1/jobs?queue=work&state=queued").await.json();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 3);
    c.get("/v1/jobs?state=done").await.problem(400);
    c.get("/v1/jobs?limit=0").await.problem(400);
    c.get("/v1/jobs?limit=abc").await.problem(400);
    c.get("/v1/jobs?cursor=xyz").await.problem(400);
    c.get("/v1/jobs?bogus=1").await.problem(400);
}

#[tokio::test]
async fn idempotency_keys_replay_refuse_and_deduplicate() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    let body = br#"{"queue":"work","input":{"a":1,"b":2}}"#.to_vec();
    let send = |body: Vec<u8>, key: &'static str| {
        let c = c.clone();
        async move {
            c.send(
                Method::POST,
                "/v1/jobs",
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", key),
                ],
                Some(body),
            )
            .await
        }
    };
    let a = send(body.clone(), "k-1").await;
    assert_eq!(a.status, 202);
    // The same body, spelled differently, is the same request.
    let b = send(
        br#"{ "input": {"b":2, "a":1}, "queue": "work" }"#.to_vec(),
        "k-1",
    )
    .await;
    assert_eq!(b.status, 202);
    assert_eq!(a.json()["id"], b.json()["id"]);
    assert_eq!(b.header("idempotent-replayed").as_deref(), Some("true"));
    let p = send(br#"{"queue":"work","input":{"a":2}}"#.to_vec(), "k-1")
        .await
        .problem(422);
    assert_eq!(p["type"], "urn:replyd:problem:idempotency-key-reused");

    // Concurrent duplicates: exactly one job; each answer is that job or 409.
    let tasks: Vec<_> = (0..24)
        .map(|_| tokio::spawn(send(body.clone(), "k-2")))
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            202 => {
                ids.insert(r.json()["id"].as_str().unwrap().to_string());
            }
            409 => {
                r.problem(409);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let all = c.get("/v1/jobs?limit=100").await.json();
    assert_eq!(
        all["jobs"].as_array().unwrap().len(),
        2,
        "k-1 and k-2: two jobs in all"
    );
}

#[tokio::test]
async fn prefer_wait_on_submit_returns_the_result_inline() {
    let Some(s) = TestServer::start("").await else { return };
    let c = s.client(None);
    let r = c
        .send(
            Method::POST,
            "/v1/jobs",
            &[("content-type", "application/json"), ("prefer", "wait=10")],
            Some(br#"{"queue":"demo","input":{"seconds":0}}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("preference-applied").as_deref(), Some("wait=10"));
    let loc = r.header("content-location").unwrap();
    assert!(loc.ends_with("/result"));
    assert_eq!(r.json()["slept"], 0.0);
    // Too slow for the wait: the usual 202.
    let t = Instant::now();
    let r = c
        .send(
            Method::POST,
            "/v1/jobs",
            &[
                ("content-type", "application/json"),
                ("prefer", "respond-async, wait=1"),
            ],
            Some(br#"{"queue":"demo","input":{"seconds":30}}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, 202);
    assert!(t.elapsed() >= Duration::from_millis(900), "it waited");
    assert!(t.elapsed() < Duration::from_secs(5));
    c.send(
        Method::POST,
        "/v1/jobs",
        &[
            ("content-type", "application/json"),
            ("prefer", "wait=soon"),
        ],
        Some(br#"{"queue":"demo"}"#.to_vec()),
    )
    .await
    .problem(400);
}

#[tokio::test]
async fn long_polling_answers_when_the_job_changes() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    let id = c.submit("work", json!({})).await;
    let r = c.get(&format!("/v1/jobs/{id}")).await;
    let etag = r.header("etag").unwrap();
    // Unchanged: 304 after the wait.
    let t = Instant::now();
    let r = c
        .send(
            Method::GET,
            &format!("/v1/jobs/{id}"),
            &[("if-none-match", &etag), ("prefer", "wait=1")],
            None,
        )
        .await;
    assert_eq!(r.status, 304);
    assert!(t.elapsed() >= Duration::from_millis(900));
    // Changed while held: answered at once, not at the end of the wait.
    let c2 = c.clone();
    let worker = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.lease("work").await
    });
    let t = Instant::now();
    let r = c
        .send(
            Method::GET,
            &format!("/v1/jobs/{id}"),
            &[("if-none-match", &etag), ("prefer", "wait=20")],
            None,
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["state"], "running");
    assert_ne!(r.header("etag").unwrap(), etag);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // Without If-None-Match, a held GET waits for the end.
    let (_, lease) = worker.await.unwrap();
    let c3 = c.clone();
    let id3 = id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c3.complete(&id3, &lease, json!("done")).await;
    });
    let r = c
        .send(
            Method::GET,
            &format!("/v1/jobs/{id}"),
            &[("prefer", "wait=20")],
            None,
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("preference-applied").as_deref(), Some("wait=20"));
}

#[tokio::test]
async fn lease_long_polls_and_batches() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    // Nothing to do: 204 after the wait.
    let t = Instant::now();
    let r = c.post("/v1/queues/work/lease", json!({"wait": 1})).await;
    assert_eq!(r.status, 204);
    assert!(t.elapsed() >= Duration::from_millis(900));
    // A job submitted during the wait is handed out at once.
    let c2 = c.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.submit("work", json!("late")).await;
    });
    let t = Instant::now();
    let r = c.post("/v1/queues/work/lease", json!({"wait": 20})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["job"]["input"], "late");
    assert!(t.elapsed() < Duration::from_secs(5));
    for i in 0..5 {
        c.submit("work", json!(i)).await;
    }
    let r = c.post("/v1/queues/work/lease", json!({"batch": 3})).await;
    let v = r.json();
    assert_eq!(v["leases"].as_array().unwrap().len(), 3);
    assert_eq!(v["leases"][0]["job"]["input"], 0, "oldest first");
    let r = c.post("/v1/queues/work/lease", json!({"batch": 10})).await;
    assert_eq!(r.json()["leases"].as_array().unwrap().len(), 2);
    c.post("/v1/queues/nope/lease", json!({}))
        .await
        .problem(404);
    c.post("/v1/queues/demo/lease", json!({}))
        .await
        .problem(409);
    c.post("/v1/queues/work/lease", json!({"batch": 0}))
        .await
        .problem(400);
    c.post("/v1/queues/work/lease", json!({"wait": 61}))
        .await
        .problem(400);
}

#[tokio::test]
async fn bad_input_gets_a_precise_problem() {
    let config = "[limits]\nmax_body = 2048\nmax_result = 4096\n[queues.work]\n";
    let Some(s) = TestServer::start(config).await else {
        return;
    };
    let c = s.client(None);
    let send = |ct: &'static str, body: Vec<u8>| {
        let c = c.clone();
        async move {
            c.send(
                Method::POST,
                "/v1/jobs",
                &[("content-type", ct)],
                Some(body),
            )
            .await
        }
    };
    let p = send("application/json", b"{\"queue\": ".to_vec())
        .await
        .problem(400);
    assert!(p["detail"].as_str().unwrap().contains("line 1"), "{p}");
    let p = send(
        "application/json",
        br#"{"queue":"work","inptu":{}}"#.to_vec(),
    )
    .await
    .problem(400);
    assert!(p["detail"].as_str().unwrap().contains("inptu"), "{p}");
    let p = send("application/json", br#"{"input":{}}"#.to_vec())
        .await
        .problem(400);
    assert!(p["detail"].as_str().unwrap().contains("queue"), "{p}");
    send("application/json", br#"[1,2]"#.to_vec())
        .await
        .problem(400);
    send("application/json", b"".to_vec()).await.problem(400);
    let p = send("application/json", br#"{"queue":"nope"}"#.to_vec())
        .await
        .problem(404);
    assert!(p["detail"].as_str().unwrap().contains("nope"));
    send("text/plain", br#"{"queue":"work"}"#.to_vec())
        .await
        .problem(415);
    send(
        "application/json",
        br#"{"queue":"work","max_attempts":0}"#.to_vec(),
    )
    .await
    .problem(400);
    send(
        "application/json",
        br#"{"queue":"work","timeout":-1}"#.to_vec(),
    )
    .await
    .problem(400);
    send(
        "application/json",
        br#"{"queue":"work","ttl":1e12}"#.to_vec(),
    )
    .await
    .problem(400);
    let big = format!(r#"{{"queue":"work","input":"{}"}}"#, "x".repeat(4000));
    send("application/json", big.into_bytes())
        .await
        .problem(413);
    // Oversized worker results are refused; the job keeps its lease.
    let id = c.submit("work", json!({})).await;
    let (_, lease) = c.lease("work").await;
    let r = c
        .send(
            Method::POST,
            &format!("/v1/jobs/{id}/complete"),
            &[
                ("content-type", "application/octet-stream"),
                ("replyd-lease-id", &lease),
            ],
            Some(vec![0u8; 5000]),
        )
        .await;
    r.problem(413);
    assert_eq!(c.state(&id).await, "running");
    let r = c
        .send(
            Method::POST,
            &format!("/v1/jobs/{id}/complete"),
            &[("content-type", "application/octet-stream")],
            Some(vec![0u8; 10]),
        )
        .await;
    let p = r.problem(400);
    assert!(p["detail"].as_str().unwrap().contains("lease"));
    c.post(
        &format!("/v1/jobs/{id}/progress"),
        json!({"lease_id": lease, "percent": 101}),
    )
    .await
    .problem(400);
    c.get("/v1/nothing-here").await.problem(404);
}

#[tokio::test]
async fn operations_endpoints() {
    let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
    let c = s.client(None);
    assert_eq!(c.get("/healthz").await.status, 200);
    assert_eq!(c.get("/readyz").await.status, 200);
    c.submit("work", json!({})).await;
    c.submit("work", json!({})).await;
    c.get("/v1/jobs").await;
    let m = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        m.contains(r#"replyd_jobs{queue="work",state="queued"} 2"#),
        "{m}"
    );
    assert!(m.contains(r#"replyd_queue_depth{queue="work"} 2"#), "{m}");
    assert!(
        m.contains("replyd_http_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(m.contains(r#"route="/v1/jobs""#), "{m}");
    let doc = c.get("/openapi.json").await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/result",
        "/v1/queues/{queue}/lease",
        "/v1/jobs/{id}/complete",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["Job"].is_object());
}


#[tokio::test]
async fn keys_scope_tenants_and_roles() {
    let Some(s) = TestServer::start(KEYS).await else { return };
    let anon = s.client(None);
    let a = s.client(Some("client-a-key"));
    let b = s.client(Some("client-b-key"));
    let w = s.client(Some("worker-a-key"));
    let admin = s.client(Some("admin-all-key"));
    anon.post("/v1/jobs", json!({"queue": "work"}))
        .await
        .problem(401);
    s.client(Some("wrong-key-123"))
        .get("/v1/jobs")
        .await
        .problem(401);
    let id = a.submit("work", json!({})).await;
    // Another tenant's job is exactly as missing as an unknown one.
    let p = b.get(&format!("/v1/jobs/{id}")).await.problem(404);
    assert_eq!(p["detail"], "no such job");
    b.post(&format!("/v1/jobs/{id}/cancel"), json!({}))
        .await
        .problem(404);
    assert!(
        b.get("/v1/jobs").await.json()["jobs"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        a.get("/v1/jobs").await.json()["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Roles.
    a.post("/v1/queues/work/lease", json!({}))
        .await
        .problem(403);
    w.post("/v1/jobs", json!({"queue": "work"}))
        .await
        .problem(403);
    a.get("/metrics").await.problem(403);
    assert_eq!(admin.get("/metrics").await.status, 200);
    assert_eq!(admin.get(&format!("/v1/jobs/{id}")).await.status, 202);
    // The worker of tenant a leases a's job; b's jobs are not offered to it.
    let bid = b.submit("work", json!("b")).await;
    let (job, _) = w.lease("work").await;
    assert_eq!(job["id"], id.as_str());
    let r = w.post("/v1/queues/work/lease", json!({})).await;
    assert_eq!(r.status, 204, "b's job {bid} must not reach a's worker");
    // Open endpoints.
    assert_eq!(anon.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn job_tokens_grant_their_own_job_only() {
    let Some(s) = TestServer::start(KEYS).await else { return };
    let a = s.client(Some("client-a-key"));
    let r = a.post("/v1/jobs", json!({"queue": "work"})).await;
    let job = r.json();
    let id = job["id"].as_str().unwrap();
    let link = job["links"]["self"].as_str().unwrap();
    let token = link.split("access_token=").nth(1).unwrap().to_string();
    let other = a.submit("work", json!({})).await;
    let anon = s.client(None);
    // As a query parameter (what a browser link carries) and as a bearer.
    let r = anon.get(link).await;
    assert_eq!(r.status, 202);
    // A link's token may be used from a page of any origin (no ambient
    // credential is involved); what a poller reads is exposed to it.
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some("*"));
    assert!(r.header("access-control-expose-headers").unwrap().contains("retry-after"));
    let t = s.client(Some(&token));
    let r = t.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.header("access-control-allow-origin"), None, "not for a bearer");
    assert_eq!(a.get(&format!("/v1/jobs/{id}")).await.header("access-control-allow-origin"), None);
    t.get(&format!("/v1/jobs/{other}")).await.problem(404);
    anon.get(&format!("/v1/jobs/{other}?access_token={token}"))
        .await
        .problem(404);
    t.get("/v1/jobs").await.problem(403);
    t.post("/v1/jobs", json!({"queue": "work"}))
        .await
        .problem(403);
    t.post("/v1/queues/work/lease", json!({}))
        .await
        .problem(403);
    t.send(Method::DELETE, &format!("/v1/jobs/{id}"), &[], None)
        .await
        .problem(403);
    let r = t.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "canceled");
    // A forged token is refused.
    anon.get(&format!("/v1/jobs/{id}?access_token=jt_forged"))
        .await
        .problem(401);
}

/// Issue 12, item 6: a stranger learns nothing about which jobs exist,
/// credentials are checked before anything else, API keys stay out of
/// URLs, a job token shows no webhook URLs or attempts, and only an
/// operator key reads the metrics.
#[tokio::test]
async fn strangers_learn_nothing_and_credentials_come_first() {
    let Some(s) = TestServer::start(KEYS).await else { return };
    let a = s.client(Some("client-a-key"));
    let id = a.submit("work", json!({})).await;
    let missing = uuid::Uuid::now_v7().to_string();
    let anon = s.client(None);
    let forged = s.client(Some("jt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
    for who in [&anon, &forged] {
        for suffix in ["", "/result", "/events", "/deliveries"] {
            let answers: Vec<(u16, serde_json::Value)> = futures::future::join_all(
                [id.as_str(), missing.as_str(), "not-a-job-id"].map(|job| {
                    let path = format!("/v1/jobs/{job}{suffix}");
                    async move {
                        let r = who.get(&path).await;
                        (r.status.as_u16(), r.json())
                    }
                }),
            )
            .await;
            assert_eq!(answers[0].0, 401, "{suffix}: {answers:?}");
            assert!(
                answers.iter().all(|a| a == &answers[0]),
                "{suffix}: an existing, a missing and a malformed job must look alike: {answers:?}"
            );
        }
        for path in [format!("/v1/jobs/{id}/cancel"), format!("/v1/jobs/{missing}/cancel")] {
            who.post(&path, json!({})).await.problem(401);
        }
    }
    // An API key in the URL is refused, even a good one.
    anon.get(&format!("/v1/jobs/{id}?access_token=client-a-key"))
        .await
        .problem(401);
    anon.get("/v1/events?access_token=client-a-key")
        .await
        .problem(401);
    // A job token reads its job, not its deliveries (webhook URLs, what
    // receivers answered).
    let job = a.get(&format!("/v1/jobs/{id}")).await.json();
    let token = job["links"]["self"]
        .as_str()
        .unwrap()
        .split("access_token=")
        .nth(1)
        .unwrap()
        .to_string();
    let t = s.client(Some(&token));
    assert_eq!(t.get(&format!("/v1/jobs/{id}")).await.status, 202);
    t.get(&format!("/v1/jobs/{id}/deliveries"))
        .await
        .problem(403);
    t.get("/v1/deliveries").await.problem(403);
    assert_eq!(a.get(&format!("/v1/jobs/{id}/deliveries")).await.status, 200);
    // Metrics are the operator's: not a tenant's admin.
    s.client(Some("admin-a-key"))
        .get("/metrics")
        .await
        .problem(403);
    assert_eq!(
        s.client(Some("admin-all-key")).get("/metrics").await.status,
        200
    );
    // The WebSocket upgrade checks a job token before answering 101.
    let bogus = format!("ws://{}/v1/ws?access_token=jt_AAAAAAAAAAAAAAAAAAAAAA", s.addr);
    match tokio_tungstenite::connect_async(bogus).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 401)
        }
        other => panic!("a bogus job token was let in: {:?}", other.map(|(_, r)| r.status())),
    }
    let good = format!("ws://{}/v1/ws?access_token={token}", s.addr);
    let (_, res) = tokio_tungstenite::connect_async(good).await.unwrap();
    assert_eq!(res.status(), 101);
    let key_in_url = format!("ws://{}/v1/ws?access_token=client-a-key", s.addr);
    assert!(tokio_tungstenite::connect_async(key_in_url).await.is_err());
}

#[tokio::test]
async fn an_open_server_refuses_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = replyd_server::Config::default();
    config.storage.sqlite = dir.path().join("r.db");
    config.validate().unwrap();
    // Binding the wildcard address sends no traffic anywhere.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let e = replyd_server::serve(config.clone(), listener, std::future::pending())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--insecure"), "{e}");
    // With keys configured it would serve; with --insecure too.
    config.insecure = true;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(replyd_server::serve(config, listener, s.cancelled_owned()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_client_slow_to_send_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(s) = TestServer::start("[limits]\nheader_timeout = 0.3\n").await else { return };
    // A complete request is served on the same kind of connection.
    let mut ok = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    ok.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    // Headers that never end: the server hangs up.
    let mut slow = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection was still open after 10 s");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_too() {
    let Some(s) = TestServer::start("").await else { return };
    let url = format!("http://{}/healthz", s.addr);
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", &url])
        .output()
        .await;
    let Ok(out) = out else {
        eprintln!("skipped: curl is not installed");
        return;
    };
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--http1.1", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", &url])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.1 200");
}
