// Flow control (issue 18) against a real server: jobs submitted for later
// are `scheduled` until due, then queued and leased on time, on every
// channel; priorities order the leases. Included by the `api` binaries
// (one per store).

mod flow {
    use super::common::streams::Sse;
    use super::common::{TestServer, flow};
    use chrono::{DateTime, Utc};
    use serde_json::{Value, json};
    use std::time::Duration;

    async fn submit(s: &TestServer, body: Value) -> (Value, Option<String>) {
        let r = s.client(None).post("/v1/jobs", body).await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        (r.json(), r.header("retry-after"))
    }

    fn time(v: &Value) -> DateTime<Utc> {
        v.as_str().unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn a_delayed_job_is_scheduled_then_queued_and_leased_on_time() {
        let Some(s) = TestServer::start("[queues.work]\n").await else {
            return;
        };
        let c = s.client(None);
        let (job, retry_after) = submit(&s, json!({"queue": "work", "input": 1, "delay": 1.5})).await;
        let id = job["id"].as_str().unwrap().to_string();
        assert_eq!(job["state"], "scheduled");
        let due = time(&job["run_at"]);
        let created = time(&job["created_at"]);
        let ahead = (due - created).num_milliseconds();
        assert!((1490..=1510).contains(&ahead), "due {ahead} ms after it was made");
        // A poller is told to come back when it is due.
        assert_eq!(retry_after.as_deref(), Some("2"));
        let mut events = Sse::open(&format!("http://{}", s.addr), &format!("/v1/jobs/{id}/events"), None, &[]).await;
        let polled = c.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(polled.status, 202);
        assert_eq!(polled.json()["state"], "scheduled");
        // A worker waiting on the queue gets it once it is due, not before.
        let r = c
            .post("/v1/queues/work/lease", json!({"worker": "w", "lease": 30, "wait": 5}))
            .await;
        let leased_at = Utc::now();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["job"]["id"], id.as_str());
        let late = (leased_at - due).num_milliseconds();
        assert!((0..1000).contains(&late), "leased {late} ms after it was due");
        let lease = r.json()["lease_id"].as_str().unwrap().to_string();
        c.complete(&id, &lease, json!({"ok": true})).await;
        let frames = events.until_terminal(Duration::from_secs(5)).await;
        let seen: Vec<(String, String)> = frames
            .iter()
            .map(|f| (f.event.clone().unwrap(), f.json()["state"].as_str().unwrap().to_string()))
            .collect();
        let want = [
            ("job.accepted", "scheduled"),
            ("job.queued", "queued"),
            ("job.started", "running"),
            ("job.succeeded", "succeeded"),
        ];
        assert_eq!(seen, want.map(|(e, s)| (e.to_string(), s.to_string())));
        assert!(c.get(&format!("/v1/jobs/{id}")).await.json().get("run_at").is_none());
    }

    #[tokio::test]
    async fn a_scheduled_job_can_be_canceled_and_bad_schedules_are_refused() {
        let Some(s) = TestServer::start("[queues.work]\n").await else {
            return;
        };
        let c = s.client(None);
        let at = (Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
        let (job, retry_after) = submit(&s, json!({"queue": "work", "run_at": at})).await;
        assert_eq!(job["state"], "scheduled");
        let left: u64 = retry_after.unwrap().parse().unwrap();
        assert!((7100..=7200).contains(&left), "{left}");
        let id = job["id"].as_str().unwrap();
        let r = c.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
        assert_eq!(r.json()["state"], "canceled", "{}", String::from_utf8_lossy(&r.body));
        // A time already past: queued at once.
        let (job, _) = submit(&s, json!({"queue": "work", "run_at": "2020-01-01T00:00:00Z"})).await;
        assert_eq!(job["state"], "queued");
        assert!(job.get("run_at").is_none());
        for (body, says) in [
            (json!({"queue": "work", "delay": 1, "run_at": at}), "not both"),
            (json!({"queue": "work", "delay": -1}), "delay"),
            (json!({"queue": "work", "delay": 1e12}), "delay"),
            (json!({"queue": "work", "run_at": "2999-01-01T00:00:00Z"}), "run_at"),
            (json!({"queue": "work", "run_at": "tomorrow"}), "run_at"),
            (json!({"queue": "work", "priority": 10}), "priority"),
            (json!({"queue": "work", "priority": -1}), "priority"),
            (json!({"queue": "work", "group": ""}), "group"),
            (json!({"queue": "work", "group": "x".repeat(129)}), "group"),
        ] {
            let p = c.post("/v1/jobs", body.clone()).await.problem(400);
            let detail = p["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(says), "{body}: {p}");
        }
        // The queue counts its scheduled jobs.
        submit(&s, json!({"queue": "work", "delay": 600})).await;
        let queues = c.get("/v1/queues").await;
        assert_eq!(queues.status, 200, "{}", String::from_utf8_lossy(&queues.body));
        let work = queues.json()["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "work")
            .unwrap()
            .clone();
        assert_eq!(
            (work["jobs"]["scheduled"].as_u64(), work["jobs"]["queued"].as_u64(), work["jobs"]["canceled"].as_u64()),
            (Some(1), Some(1), Some(1)),
            "{work}"
        );
    }

    #[tokio::test]
    async fn higher_priorities_are_leased_first() {
        let Some(s) = TestServer::start("[queues.work]\n").await else {
            return;
        };
        let c = s.client(None);
        let mut made = Vec::new();
        for (i, priority) in [0, 3, 9, 3, 0, 9].into_iter().enumerate() {
            let (job, _) = submit(&s, json!({"queue": "work", "input": i, "priority": priority, "group": "acme"})).await;
            assert_eq!(job["priority"], priority);
            assert_eq!(job["group"], "acme");
            made.push((priority, i));
        }
        made.sort_by_key(|&(p, i)| (std::cmp::Reverse(p), i));
        let r = c
            .post("/v1/queues/work/lease", json!({"worker": "w", "lease": 30, "batch": 6}))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let got: Vec<u64> = r.json()["leases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["job"]["input"].as_u64().unwrap())
            .collect();
        assert_eq!(got, made.iter().map(|&(_, i)| i as u64).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queues_limits_hold_for_every_worker() {
        let Some(s) = TestServer::start(flow::LIMITED).await else {
            return;
        };
        flow::limits_hold(&[s.client(None)]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_schedule_fires_each_tick_once_and_is_kept_by_name() {
        let Some(s) = TestServer::start(flow::SCHEDULED).await else {
            return;
        };
        let c = s.client(None);
        flow::each_tick_fires_once(std::slice::from_ref(&c)).await;
        // By API: checked, created, replaced, listed, removed.
        let put = |name: &str, body: Value| {
            let c = c.clone();
            let path = format!("/v1/schedules/{name}");
            async move { c.send(reqwest::Method::PUT, &path, &[("content-type", "application/json")], Some(serde_json::to_vec(&body).unwrap())).await }
        };
        let hourly = json!({"cron": "0 * * * *", "timezone": "Asia/Tokyo", "job": {"queue": "work", "priority": 2}});
        for (body, status, says) in [
            (json!({"cron": "0 * * *", "job": {"queue": "work"}}), 400, "cron"),
            (json!({"cron": "0 * * * *", "timezone": "Nowhere/Land", "job": {"queue": "work"}}), 400, "timezone"),
            (json!({"cron": "0 * * * *", "job": {"queue": "nope"}}), 404, "nope"),
            (json!({"cron": "0 * * * *", "job": {"queue": "work", "delay": 5}}), 400, "delay"),
            (json!({"cron": "0 0 30 2 *", "job": {"queue": "work"}}), 400, "never"),
        ] {
            let r = put("bad", body.clone()).await;
            let p = r.problem(status);
            assert!(p["detail"].as_str().unwrap().contains(says), "{body}: {p}");
        }
        let r = put("hourly", hourly.clone()).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let made = r.json();
        assert_eq!((made["timezone"].as_str(), made["source"].as_str()), (Some("Asia/Tokyo"), Some("api")));
        let next: chrono::DateTime<Utc> = made["next_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(next.timestamp() % 3600, 0, "on the hour: {next}");
        assert_eq!(put("hourly", hourly).await.status, 200);
        let names: Vec<String> = c.get("/v1/schedules").await.json()["schedules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["every-second", "hourly"]);
        // The configuration's are the file's.
        put("every-second", json!({"cron": "0 * * * *", "job": {"queue": "work"}})).await.problem(409);
        c.send(reqwest::Method::DELETE, "/v1/schedules/every-second", &[], None).await.problem(409);
        assert_eq!(c.send(reqwest::Method::DELETE, "/v1/schedules/hourly", &[], None).await.status, 204);
        c.get("/v1/schedules/hourly").await.problem(404);
        c.get("/v1/schedules/a%2Fb").await.problem(400);
    }

    /// A tenant's schedules are bounded (limits.max_schedules).
    #[tokio::test]
    async fn a_tenant_keeps_at_most_max_schedules() {
        let Some(s) = TestServer::start("[limits]\nmax_schedules = 2\n[queues.work]\n").await else {
            return;
        };
        let c = s.client(None);
        let put = |name: &'static str| {
            let c = c.clone();
            async move {
                let body = json!({"cron": "0 0 * * *", "job": {"queue": "work"}});
                c.send(reqwest::Method::PUT, &format!("/v1/schedules/{name}"), &[("content-type", "application/json")], Some(serde_json::to_vec(&body).unwrap()))
                    .await
            }
        };
        assert_eq!(put("a").await.status, 201);
        assert_eq!(put("b").await.status, 201);
        let p = put("c").await.problem(409);
        assert!(p["detail"].as_str().unwrap().contains("at most 2"), "{p}");
        // Replacing one is not one more.
        assert_eq!(put("a").await.status, 200);
        assert_eq!(c.send(reqwest::Method::DELETE, "/v1/schedules/b", &[], None).await.status, 204);
        assert_eq!(put("c").await.status, 201);
    }

    /// An in-process executor obeys its queue's max_running as workers do:
    /// 16 slots, at most 2 jobs running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_in_process_executor_keeps_to_max_running() {
        let Some(s) = TestServer::start("[queues.slow]\nexecutor = \"demo\"\nconcurrency = 16\nmax_running = 2\n").await else {
            return;
        };
        let c = s.client(None);
        let mut ids = Vec::new();
        for _ in 0..6 {
            ids.push(c.submit("slow", json!({"seconds": 0.3})).await);
        }
        let mut most = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let running = c.get("/v1/jobs?queue=slow&state=running").await.json()["jobs"].as_array().unwrap().len();
            most = most.max(running);
            let done = c.get("/v1/jobs?queue=slow&state=succeeded").await.json()["jobs"].as_array().unwrap().len();
            if done == ids.len() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{done} of 6 done");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(most, 2, "max_running = 2 with 16 slots");
    }
}
