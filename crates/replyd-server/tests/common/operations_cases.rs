// Operations cases (dead letters as a canary, failing endpoints paused and
// resumed, operational events over SSE and the operational webhook),
// shared by the `operations` test binaries (one per store); included with
// `include!`, so `BACKEND` and `common` come from the includer. Receivers
// run on 127.0.0.1, which the servers here allow-list.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::hooks::{assert_signed, received, receiver};
use common::{KEYS, TestServer};
use futures::StreamExt;
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An SSE stream's frames as (id, event, data), read in the background.
type Frames = Arc<Mutex<Vec<(i64, String, Value)>>>;

async fn operational_stream(s: &TestServer, key: &str, after: Option<i64>) -> Frames {
    let mut req = reqwest::Client::new()
        .get(format!("http://{}/v1/events?operational=true", s.addr))
        .bearer_auth(key);
    if let Some(id) = after {
        req = req.header("last-event-id", id.to_string());
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let frames: Frames = Arc::default();
    let out = frames.clone();
    tokio::spawn(async move {
        let mut body = res.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|l| l.strip_prefix(name).map(str::to_string))
                };
                if let (Some(id), Some(event), Some(data)) =
                    (field("id: "), field("event: "), field("data: "))
                {
                    out.lock().unwrap().push((
                        id.parse().unwrap(),
                        event,
                        serde_json::from_str(&data).unwrap(),
                    ));
                }
            }
        }
    });
    frames
}

async fn frames(f: &Frames, n: usize) -> Vec<(i64, String, Value)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = f.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} operational events arrived: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn hooked_and_canceled(c: &common::Client, url: &str) -> String {
    let r = c
        .post("/v1/jobs", json!({"queue": "work", "input": {}, "webhook": {"url": url}}))
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(c.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await.status, 200);
    id
}

async fn delivery_state(c: &common::Client, job: &str) -> String {
    let r = c.get(&format!("/v1/jobs/{job}/deliveries")).await;
    r.json()["deliveries"][0]["state"].as_str().unwrap().to_string()
}

async fn wait_delivery_state(c: &common::Client, job: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while delivery_state(c, job).await != state {
        assert!(tokio::time::Instant::now() < deadline, "{job}'s delivery never {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_dead_lettered_paused_and_resumed_with_operators_told() {
    let (base, r) = receiver().await;
    r.down.store(true, Ordering::SeqCst);
    let config = format!(
        "{KEYS}\n[[api_keys]]\nkey = \"admin-b-key\"\ntenant = \"b\"\nrole = \"admin\"\n[webhooks]\nsecret = \"{SECRET}\"\nallow_networks = [\"127.0.0.0/8\"]\n\
         retry_schedule = [0, 0.1]\ntimeout = 2\nper_endpoint = 1\n\
         [operations]\nwebhook_url = \"{base}/ops\"\ndisable_endpoint_after = 2\ndlq_threshold = 2\n"
    );
    let Some(s) = TestServer::start(&config).await else { return };
    let client = s.client(Some("client-a-key"));
    let admin = s.client(Some("admin-a-key"));
    let ops = operational_stream(&s, "admin-a-key", None).await;
    let others = operational_stream(&s, "admin-b-key", Some(0)).await;
    let down = format!("{base}/down");

    // Two dead letters in a row: the threshold is reached and the
    // endpoint paused.
    let a = hooked_and_canceled(&client, &down).await;
    wait_delivery_state(&client, &a, "dead").await;
    let b = hooked_and_canceled(&client, &down).await;
    wait_delivery_state(&client, &b, "dead").await;
    let seen = frames(&ops, 4).await;
    let kinds: Vec<&str> = seen.iter().map(|f| f.1.as_str()).collect();
    assert_eq!(
        kinds,
        ["delivery.dead_lettered", "delivery.dead_lettered", "dlq.threshold_exceeded", "endpoint.disabled"]
    );
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "ids rise: {seen:?}");
    assert_eq!(seen[0].2["type"], "delivery.dead_lettered");
    assert_eq!(seen[0].2["tenant"], "a");
    assert_eq!(seen[0].2["data"]["job_id"], a.as_str());
    assert_eq!(seen[0].2["data"]["destination"], down.as_str());
    assert_eq!(seen[3].2["data"]["url"], down.as_str());

    // While paused, what is owed to it is held, not sent.
    let sent_before = r.got.lock().unwrap().iter().filter(|g| g.0 == "/down").count();
    let c = hooked_and_canceled(&client, &down).await;
    let d = hooked_and_canceled(&client, &down).await;
    wait_delivery_state(&client, &c, "held").await;
    wait_delivery_state(&client, &d, "held").await;
    let list = admin.get("/v1/endpoints").await;
    assert_eq!(list.status, 200);
    let e = &list.json()["endpoints"][0];
    assert_eq!((e["url"].as_str(), e["paused"].as_bool(), e["held"].as_u64()), (Some(down.as_str()), Some(true), Some(2)));
    assert_eq!(client.get("/v1/endpoints").await.status, 403, "admins only");
    let held = client.get("/v1/deliveries?state=held").await;
    assert_eq!(held.json()["deliveries"].as_array().unwrap().len(), 2);

    // The canary: dead letters by channel and tenant, and the oldest's age.
    let metrics = s.client(Some("admin-all-key")).get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        text.contains("replyd_dead_letters{channel=\"webhook\",tenant=\"a\"} 2"),
        "{text}"
    );
    assert!(text.contains("replyd_dead_letter_oldest_age_seconds{channel=\"webhook\",tenant=\"a\"}"));

    // Resumed once it works again: the held deliveries go, oldest first
    // (one at a time to an endpoint here, `per_endpoint = 1`, so they
    // also arrive in that order), and the first through tells the
    // endpoint recovered.
    r.down.store(false, Ordering::SeqCst);
    let other_tenant = s.client(Some("admin-b-key"));
    let refused = other_tenant.post("/v1/endpoints/resume", json!({"url": down})).await;
    refused.problem(404);
    let resumed = admin.post("/v1/endpoints/resume", json!({"url": down})).await;
    assert_eq!(resumed.status, 200, "{}", String::from_utf8_lossy(&resumed.body));
    assert_eq!(resumed.json()["released"], 2);
    wait_delivery_state(&client, &c, "delivered").await;
    wait_delivery_state(&client, &d, "delivered").await;
    let after: Vec<String> = r.got.lock().unwrap().iter().filter(|g| g.0 == "/down").skip(sent_before)
        .map(|g| serde_json::from_slice::<Value>(&g.2).unwrap()["data"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(after, [c.clone(), d.clone()], "held deliveries flow in order, once each");
    let seen = frames(&ops, 5).await;
    assert_eq!(seen[4].1, "endpoint.recovered");
    assert!(admin.get("/v1/endpoints").await.json()["endpoints"].as_array().unwrap().is_empty());

    // Resuming the stream after an id gives exactly what followed.
    let resumed = operational_stream(&s, "admin-a-key", Some(seen[1].0)).await;
    let again = frames(&resumed, 3).await;
    assert_eq!(again, seen[2..5].to_vec());
    // The operational webhook got the same, in order, signed.
    let hooks = received(&r, "/ops", 5).await;
    let types: Vec<&str> = hooks.iter().map(|(_, b)| b["type"].as_str().unwrap()).collect();
    assert_eq!(types, seen.iter().map(|f| f.1.as_str()).collect::<Vec<_>>());
    let raw = r.got.lock().unwrap().iter().find(|g| g.0 == "/ops").cloned().unwrap();
    assert_eq!(raw.1["webhook-id"].to_str().unwrap(), format!("ops_{}", seen[0].0));
    assert_signed(SECRET, &raw.1, &raw.2, "the operational webhook");
    // Another tenant's operators saw none of it.
    assert!(others.lock().unwrap().is_empty(), "{:?}", others.lock().unwrap());
}
