// The batch calls (`POST /v1/jobs:batch`, `POST /v1/workers/complete`),
// shared by the `api` test binaries (one per store) beside `api_cases.rs`;
// included with `include!`, so `BACKEND`, `common` and that file's imports
// come from the includer.

mod batch {
    use super::*;

    #[tokio::test]
    async fn a_batch_of_jobs_is_accepted_at_once_each_with_its_own_answer() {
        let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
        let c = s.client(None);
        let r = c
            .post(
                "/v1/jobs:batch",
                json!({"jobs": [
                    {"queue": "work", "input": {"month": "2026-11"}, "idempotency_key": "nov"},
                    {"queue": "no-such-queue", "input": {}},
                    {"queue": "work", "input": {"month": "2026-10"}},
                ]}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        let answers = v["jobs"].as_array().unwrap();
        let statuses: Vec<_> = answers.iter().map(|a| a["status"].as_u64().unwrap()).collect();
        assert_eq!(statuses[0], 202, "{v}");
        assert!((400..500).contains(&statuses[1]), "an unknown queue: {v}");
        assert_eq!(statuses[2], 202, "{v}");
        assert!(answers[1]["problem"]["detail"].is_string());
        let nov = answers[0]["job"]["id"].as_str().unwrap().to_string();
        assert_eq!(answers[0]["job"]["state"], "queued");
        assert_eq!(c.state(&nov).await, "queued");
        // The same key again: the same job, said to be a replay.
        let again = c
            .post(
                "/v1/jobs:batch",
                json!({"jobs": [{"queue": "work", "input": {"month": "2026-11"}, "idempotency_key": "nov"}]}),
            )
            .await
            .json();
        assert_eq!(again["jobs"][0]["job"]["id"], nov.as_str());
        assert_eq!(again["jobs"][0]["replayed"], true);
        let listed = c.get("/v1/jobs?queue=work").await.json();
        assert_eq!(listed["jobs"].as_array().unwrap().len(), 2, "{listed}");
        // A key is one key (a body without `input` digests without it, in a
        // batch too) whichever call used it: a job sent alone, then in
        // a batch as it was sent, is one job; with other fields, a reuse.
        let r = c
            .send(
                Method::POST,
                "/v1/jobs",
                &[("idempotency-key", "dec"), ("content-type", "application/json")],
                Some(br#"{"queue": "work"}"#.to_vec()),
            )
            .await;
        assert_eq!(r.status, 202);
        let dec = r.json()["id"].as_str().unwrap().to_string();
        let again = c
            .post(
                "/v1/jobs:batch",
                json!({"jobs": [
                    {"idempotency_key": "dec", "queue": "work"},
                    {"idempotency_key": "dec", "queue": "work", "input": {"month": "2027-01"}},
                ]}),
            )
            .await
            .json();
        assert_eq!(again["jobs"][0]["job"]["id"], dec.as_str(), "{again}");
        assert_eq!(again["jobs"][0]["replayed"], true);
        assert!(
            (400..500).contains(&again["jobs"][1]["status"].as_u64().unwrap()),
            "{again}"
        );
        // What is not a batch is refused as a whole.
        c.post("/v1/jobs:batch", json!({"jobs": []})).await.problem(400);
        c.post("/v1/jobs:batch", json!({"jobs": [{"queue": "work", "colour": 1}]}))
            .await
            .problem(400);
        let many: Vec<_> = (0..1001).map(|_| json!({"queue": "work"})).collect();
        c.post("/v1/jobs:batch", json!({ "jobs": many })).await.problem(400);
    }

    #[tokio::test]
    async fn many_outcomes_in_one_call_each_fenced_by_its_lease() {
        let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
        let c = s.client(None);
        let mut leased = Vec::new();
        for i in 0..3 {
            c.submit("work", json!({ "i": i })).await;
            let (job, lease) = c.lease("work").await;
            leased.push((job["id"].as_str().unwrap().to_string(), lease));
        }
        let [(done, done_lease), (failed, failed_lease), (stale, _)] = &leased[..] else {
            unreachable!()
        };
        let r = c
            .post(
                "/v1/workers/complete",
                json!({"outcomes": [
                    {"job_id": done, "lease_id": done_lease, "result": {"pages": 12}},
                    {"job_id": failed, "lease_id": failed_lease, "error": {"code": "bad_input", "message": "no such month"}},
                    {"job_id": stale, "lease_id": "not-its-lease"},
                    {"job_id": "nope", "lease_id": "x"},
                ]}),
            )
            .await;
        assert_eq!(r.status, 200);
        let v = r.json();
        let answers = v["outcomes"].as_array().unwrap();
        let statuses: Vec<_> = answers.iter().map(|a| a["status"].as_u64().unwrap()).collect();
        assert_eq!(statuses, [200, 200, 409, 404], "in order: {v}");
        assert_eq!(answers[0]["state"], "succeeded");
        assert_eq!(answers[1]["state"], "failed");
        assert!(answers[0].get("job").is_none(), "the job is not repeated: {v}");
        let failed_job = c.get(&format!("/v1/jobs/{failed}")).await.json();
        assert_eq!(failed_job["error"]["code"], "bad_input");
        assert_eq!(answers[2]["problem"]["type"], "urn:replyd:problem:lease-lost");
        assert_eq!(answers[3]["job_id"], "nope");
        let result = c.get(&format!("/v1/jobs/{done}/result")).await;
        assert_eq!(result.json(), json!({"pages": 12}));
        assert_eq!(c.state(stale).await, "running", "its lease still holds it");
        // The call itself refuses what is not a batch of outcomes.
        c.post("/v1/workers/complete", json!({"outcomes": []}))
            .await
            .problem(400);
        c.post("/v1/workers/complete", json!({"outcomes": [{"job_id": done}]}))
            .await
            .problem(400);
        let many: Vec<_> = (0..1001)
            .map(|_| json!({"job_id": done, "lease_id": "x"}))
            .collect();
        c.post("/v1/workers/complete", json!({ "outcomes": many }))
            .await
            .problem(400);
    }

    #[tokio::test]
    async fn outcomes_ride_on_the_next_lease() {
        let Some(s) = TestServer::start(PULL_QUEUES).await else { return };
        let c = s.client(None);
        for i in 0..3 {
            c.submit("work", json!({ "i": i })).await;
        }
        let first = c
            .post("/v1/queues/work/lease", json!({"batch": 2}))
            .await
            .json();
        assert!(first.get("outcomes").is_none(), "none were sent: {first}");
        let held: Vec<(String, String)> = first["leases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let id = l["job"]["id"].as_str().unwrap().to_string();
                (id, l["lease_id"].as_str().unwrap().to_string())
            })
            .collect();
        assert_eq!(held.len(), 2);
        // This batch's outcomes and the next lease in one call.
        let next = c
            .post(
                "/v1/queues/work/lease",
                json!({"batch": 2, "outcomes": [
                    {"job_id": held[0].0, "lease_id": held[0].1, "result": {"ok": 1}},
                    {"job_id": held[1].0, "lease_id": "stale"},
                ]}),
            )
            .await;
        assert_eq!(next.status, 200);
        let v = next.json();
        let statuses: Vec<_> = v["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["status"].as_u64().unwrap())
            .collect();
        assert_eq!(statuses, [200, 409], "{v}");
        assert_eq!(v["outcomes"][0]["state"], "succeeded");
        assert_eq!(v["leases"].as_array().unwrap().len(), 1, "the third job: {v}");
        assert_eq!(v["leases"][0]["job"]["input"], json!({"i": 2}));
        let result = c.get(&format!("/v1/jobs/{}/result", held[0].0)).await;
        assert_eq!(result.json(), json!({"ok": 1}));
        assert_eq!(c.state(&held[1].0).await, "running");
        // Outcomes with nothing left to lease: still answered (200, no
        // leases), not a bare 204 that would lose their answers.
        let last = c
            .post(
                "/v1/queues/work/lease",
                json!({"batch": 5, "outcomes": [
                    {"job_id": held[1].0, "lease_id": held[1].1},
                ]}),
            )
            .await;
        assert_eq!(last.status, 200);
        let v = last.json();
        assert_eq!(v["outcomes"][0]["status"], 200, "{v}");
        assert_eq!(v["leases"], json!([]));
        // Outcomes need the batch form of the answer.
        c.post(
            "/v1/queues/work/lease",
            json!({"outcomes": [{"job_id": held[1].0, "lease_id": "x"}]}),
        )
        .await
        .problem(400);
    }
}
