// The console's API (issue 16) against a real server: signing in with a
// cookie and CSRF token, portal passes, job filters, bulk actions, retry,
// queue pause and figures, endpoints paused by hand. Included by the `api`
// binaries (one per store).

mod console {
    use super::common::{KEYS, TestServer};
    use reqwest::Method;
    use serde_json::{Value, json};

    /// Signs in with `key`: the session cookie's value and the CSRF token.
    async fn sign_in(s: &TestServer, key: &str) -> (String, String) {
        let r = s
            .client(None)
            .post("/ui/session", json!({"key": key}))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let cookie = r.header("set-cookie").unwrap();
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(attr), "{cookie}");
        }
        assert!(!cookie.contains("Secure"), "no TLS here: {cookie}");
        let value = cookie
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("replyd_session=")
            .unwrap()
            .to_string();
        assert!(value.starts_with("cs_"));
        assert!(!value.contains(key), "the cookie does not hold the key");
        (value, r.json()["csrf"].as_str().unwrap().to_string())
    }

    async fn with_cookie(
        s: &TestServer,
        method: Method,
        path: &str,
        cookie: &str,
        extra: &[(&str, &str)],
        body: Option<Value>,
    ) -> super::common::Res {
        let cookie = format!("replyd_session={cookie}");
        let mut headers = vec![("cookie", cookie.as_str()), ("content-type", "application/json")];
        headers.extend_from_slice(extra);
        s.client(None)
            .send(method, path, &headers, body.map(|b| serde_json::to_vec(&b).unwrap()))
            .await
    }

    #[tokio::test]
    async fn a_console_session_changes_nothing_without_its_csrf_token_or_from_elsewhere() {
        let Some(s) = TestServer::start(KEYS).await else { return };
        let (cookie, csrf) = sign_in(&s, "client-a-key").await;
        let job = json!({"queue": "work", "input": {}});

        // Reads need the cookie only; its session says who it is.
        let r = with_cookie(&s, Method::GET, "/ui/session", &cookie, &[], None).await;
        assert_eq!(r.status, 200);
        let who = r.json();
        assert_eq!((who["tenant"].as_str(), who["role"].as_str()), (Some("a"), Some("client")));
        assert_eq!(who["csrf"], csrf.as_str());
        assert_eq!(with_cookie(&s, Method::GET, "/v1/jobs", &cookie, &[], None).await.status, 200);

        // A change needs the token; another session's does not do.
        let r = with_cookie(&s, Method::POST, "/v1/jobs", &cookie, &[], Some(job.clone())).await;
        assert_eq!(r.problem(403)["type"], "urn:replyd:problem:csrf");
        let (_, other_csrf) = sign_in(&s, "client-b-key").await;
        let r = with_cookie(&s, Method::POST, "/v1/jobs", &cookie, &[("x-csrf-token", &other_csrf)], Some(job.clone())).await;
        r.problem(403);
        let r = with_cookie(&s, Method::POST, "/v1/jobs", &cookie, &[("x-csrf-token", &csrf)], Some(job.clone())).await;
        assert_eq!(r.status, 202);
        let id = r.json()["id"].as_str().unwrap().to_string();

        // Not from another origin or site, even with the token, even a read.
        let evil = [("x-csrf-token", csrf.as_str()), ("origin", "https://evil.example")];
        with_cookie(&s, Method::POST, "/v1/jobs", &cookie, &evil, Some(job.clone())).await.problem(403);
        let cross = [("sec-fetch-site", "cross-site")];
        with_cookie(&s, Method::GET, "/v1/jobs", &cookie, &cross, None).await.problem(403);
        let same = format!("http://{}", s.addr);
        let r = with_cookie(&s, Method::POST, &format!("/v1/jobs/{id}/cancel"), &cookie, &[("x-csrf-token", &csrf), ("origin", &same)], None).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

        // A job token in the query is the credential, not the cookie the
        // browser also sends: a page of another origin of the same site
        // (an app at app.example.com, replyd at api.example.com) may use
        // its job links while its user is signed in to the console.
        let r = with_cookie(&s, Method::POST, "/v1/jobs", &cookie, &[("x-csrf-token", &csrf)], Some(job.clone())).await;
        let link = r.json()["links"]["self"].as_str().unwrap().to_string();
        let r = with_cookie(&s, Method::POST, &link.replacen("?access_token", "/cancel?access_token", 1), &cookie, &[("origin", "https://app.example")], None).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        // An explicit key passes as before (it is not ambient).
        let r = s
            .client(Some("client-a-key"))
            .send(Method::POST, "/v1/jobs", &[("content-type", "application/json"), ("origin", "https://evil.example")], Some(serde_json::to_vec(&job).unwrap()))
            .await;
        assert_eq!(r.status, 202);

        // A forged or altered cookie is nobody.
        let mut altered = cookie.clone().into_bytes();
        let i = altered.len() - 5;
        altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        with_cookie(&s, Method::GET, "/v1/jobs", &altered, &[], None).await.problem(401);

        // Signing in: a wrong key, a malformed body; signing out.
        s.client(None).post("/ui/session", json!({"key": "nope-nope-nope"})).await.problem(401);
        s.client(None).post("/ui/session", json!({"key": "client-a-key", "role": "admin"})).await.problem(400);
        let r = with_cookie(&s, Method::DELETE, "/ui/session", &cookie, &[("x-csrf-token", &csrf)], None).await;
        assert_eq!(r.status, 204);
        assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
        // Behind a TLS proxy the cookie is Secure.
        let r = s
            .client(None)
            .send(Method::POST, "/ui/session", &[("content-type", "application/json"), ("x-forwarded-proto", "https")], Some(br#"{"key":"client-a-key"}"#.to_vec()))
            .await;
        assert!(r.header("set-cookie").unwrap().contains("; Secure"));
    }

    #[tokio::test]
    async fn a_portal_link_shows_one_tenant_read_only() {
        let Some(s) = TestServer::start(KEYS).await else { return };
        let a = s.client(Some("client-a-key"));
        let b = s.client(Some("client-b-key"));
        let mine = a.submit("work", json!({"n": 1})).await;
        let theirs = b.submit("work", json!({"n": 2})).await;

        // Who may mint: an operator for any tenant, a tenant's admin for
        // its own; not a client.
        let admin = s.client(Some("admin-all-key"));
        let r = admin.post("/v1/portal-links", json!({"tenant": "a", "ttl": 600})).await;
        assert_eq!(r.status, 201);
        let link = r.json();
        let url = link["url"].as_str().unwrap();
        assert!(url.starts_with(&format!("http://{}/ui/portal#pt_", s.addr)), "{url}");
        let pass = url.split('#').nth(1).unwrap().to_string();
        admin.post("/v1/portal-links", json!({})).await.problem(400);
        admin.post("/v1/portal-links", json!({"tenant": "a", "ttl": 10})).await.problem(400);
        let tenant_admin = s.client(Some("admin-a-key"));
        assert_eq!(tenant_admin.post("/v1/portal-links", json!({})).await.status, 201);
        tenant_admin.post("/v1/portal-links", json!({"tenant": "b"})).await.problem(403);
        a.post("/v1/portal-links", json!({})).await.problem(403);

        // The pass reads its tenant's jobs and deliveries, nothing else.
        let p = s.client(Some(&pass));
        let who = p.get("/ui/session").await.json();
        assert_eq!((who["tenant"].as_str(), who["role"].as_str(), who["portal"].as_bool()), (Some("a"), Some("viewer"), Some(true)));
        let listed: Vec<String> = p.get("/v1/jobs").await.json()["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
        assert_eq!(listed, vec![mine.clone()]);
        assert_eq!(p.get(&format!("/v1/jobs/{mine}")).await.status, 202);
        p.get(&format!("/v1/jobs/{theirs}")).await.problem(404);
        assert_eq!(p.get("/v1/deliveries").await.status, 200);
        p.post("/v1/jobs", json!({"queue": "work", "input": {}})).await.problem(403);
        p.post(&format!("/v1/jobs/{mine}/cancel"), json!({})).await.problem(403);
        p.post("/v1/deliveries/retry", json!({})).await.problem(403);
        p.post("/v1/jobs:bulk", json!({"action": "cancel"})).await.problem(403);
        p.post("/v1/portal-links", json!({})).await.problem(403);
        // Never in a URL, and never altered.
        s.client(None).get(&format!("/v1/jobs/{mine}?access_token={pass}")).await.problem(401);
        let forged = format!("{}x", &pass[..pass.len() - 1]);
        s.client(Some(&forged)).get("/v1/jobs").await.problem(401);
    }

    #[tokio::test]
    async fn bulk_actions_reach_every_match_a_slice_at_a_time() {
        let Some(s) = TestServer::start(KEYS).await else { return };
        let a = s.client(Some("client-a-key"));
        let b = s.client(Some("client-b-key"));
        let spared = b.submit("work", json!({})).await;
        for _ in 0..2 {
            let jobs: Vec<Value> = (0..600).map(|i| json!({"queue": "work", "input": {"i": i}})).collect();
            assert_eq!(a.post("/v1/jobs:batch", json!({"jobs": jobs})).await.status, 200);
        }
        let done = a.submit("other", json!({})).await;
        let (_, lease) = s.client(Some("worker-a-key")).lease("other").await;
        s.client(Some("worker-a-key")).complete(&done, &lease, json!({})).await;

        // 1,200 matches: a slice of 1,000, then the rest.
        let filter = json!({"queue": "work", "state": "queued"});
        let first = a.post("/v1/jobs:bulk", json!({"action": "cancel", "filter": filter})).await.json();
        assert_eq!((first["matched"].as_u64(), first["changed"].as_u64()), (Some(1000), Some(1000)));
        let cursor = first["next_cursor"].as_str().unwrap();
        let second = a.post("/v1/jobs:bulk", json!({"action": "cancel", "filter": filter, "cursor": cursor})).await.json();
        assert_eq!((second["matched"].as_u64(), second["changed"].as_u64()), (Some(200), Some(200)));
        assert!(second["next_cursor"].is_null());
        assert_eq!(b.state(&spared).await, "queued", "another tenant's job is not touched");

        // What an action cannot do is said, job by job.
        let r = a.post("/v1/jobs:bulk", json!({"action": "cancel", "filter": {"queue": "other"}})).await.json();
        assert_eq!((r["matched"].as_u64(), r["changed"].as_u64()), (Some(1), Some(0)));
        assert_eq!(r["refused"][0]["id"], done.as_str());
        assert!(r["refused"][0]["detail"].as_str().unwrap().contains("succeeded"), "{r}");

        // Retry two canceled jobs found by text; delete the rest.
        let r = a.post("/v1/jobs:bulk", json!({"action": "retry", "filter": {"state": "canceled", "q": "\"i\":599"}})).await.json();
        assert_eq!((r["matched"].as_u64(), r["changed"].as_u64()), (Some(2), Some(2)), "{r}");
        assert_eq!(r["created"].as_array().unwrap().len(), 2);
        let mut cursor = Value::Null;
        let mut deleted = 0;
        loop {
            let r = a.post("/v1/jobs:bulk", json!({"action": "delete", "filter": {"state": "canceled"}, "cursor": cursor})).await.json();
            deleted += r["changed"].as_u64().unwrap();
            cursor = r["next_cursor"].clone();
            if cursor.is_null() {
                break;
            }
        }
        assert_eq!(deleted, 1200);
        let left = a.get("/v1/jobs?limit=1000").await.json();
        assert_eq!(left["jobs"].as_array().unwrap().len(), 3, "two retries and the finished job");

        // Not for a worker; not with a bad filter.
        s.client(Some("worker-a-key")).post("/v1/jobs:bulk", json!({"action": "cancel"})).await.problem(403);
        a.post("/v1/jobs:bulk", json!({"action": "explode"})).await.problem(400);
        a.post("/v1/jobs:bulk", json!({"action": "cancel", "filter": {"since": "yesterday"}})).await.problem(400);
        a.post("/v1/jobs:bulk", json!({"action": "cancel", "cursor": "nope"})).await.problem(400);
    }

    #[tokio::test]
    async fn a_failed_job_is_retried_as_a_new_one() {
        let Some(s) = TestServer::start(KEYS).await else { return };
        let a = s.client(Some("client-a-key"));
        let w = s.client(Some("worker-a-key"));
        let id = a.submit("work", json!({"report": 7})).await;
        let (_, lease) = w.lease("work").await;
        let r = w.post(&format!("/v1/jobs/{id}/fail"), json!({"lease_id": lease, "error": {"code": "x", "message": "no"}, "retry": false})).await;
        assert_eq!(r.status, 200);
        assert_eq!(a.get(&format!("/v1/jobs/{id}/input")).await.json(), json!({"report": 7}));

        let r = a.post(&format!("/v1/jobs/{id}/retry"), json!({})).await;
        assert_eq!(r.status, 202);
        let new = r.json()["id"].as_str().unwrap().to_string();
        assert_ne!(new, id);
        assert_eq!(r.header("location").unwrap(), format!("/v1/jobs/{new}"));
        let (leased, _) = w.lease("work").await;
        assert_eq!((leased["id"].as_str(), &leased["input"]), (Some(new.as_str()), &json!({"report": 7})));
        assert_eq!(a.state(&id).await, "failed", "the first stays as it ended");
        a.post(&format!("/v1/jobs/{new}/retry"), json!({})).await.problem(409);
        s.client(Some("client-b-key")).post(&format!("/v1/jobs/{id}/retry"), json!({})).await.problem(404);
        let token = a.get(&format!("/v1/jobs/{id}")).await.json()["links"]["self"].as_str().unwrap().split("access_token=").nth(1).unwrap().to_string();
        s.client(None).post(&format!("/v1/jobs/{id}/retry?access_token={token}"), json!({})).await.problem(403);
        s.client(None).get(&format!("/v1/jobs/{id}/input?access_token={token}")).await.problem(403);
    }

    #[tokio::test]
    async fn a_paused_queue_gives_workers_nothing_and_queues_show_their_hour() {
        let Some(s) = TestServer::start(KEYS).await else { return };
        let op = s.client(Some("admin-all-key"));
        let a = s.client(Some("client-a-key"));
        let w = s.client(Some("worker-a-key"));
        let first = a.submit("work", json!({})).await;
        let (_, lease) = w.lease("work").await;
        w.complete(&first, &lease, json!({})).await;

        let r = op.post("/v1/queues/work/pause", json!({})).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["paused"], true);
        a.submit("work", json!({})).await;
        let r = w.post("/v1/queues/work/lease", json!({"worker": "w", "wait": 0.3})).await;
        assert_eq!(r.status, 204, "paused: nothing to lease");

        // Counts are read at most every 2 s: wait for the second job.
        let mut work = Value::Null;
        for _ in 0..50 {
            let queues = op.get("/v1/queues").await.json();
            work = queues["queues"].as_array().unwrap().iter().find(|q| q["name"] == "work").unwrap().clone();
            if work["jobs"]["queued"] == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(work["paused"], true);
        assert_eq!((work["jobs"]["queued"].as_u64(), work["jobs"]["succeeded"].as_u64()), (Some(1), Some(1)));
        let minutes = work["minutes"].as_array().unwrap();
        assert_eq!(minutes.len(), 60);
        let hour: (u64, u64) = minutes.iter().fold((0, 0), |(i, o), m| (i + m["in"].as_u64().unwrap(), o + m["out"].as_u64().unwrap()));
        assert_eq!(hour, (2, 1), "two in, one out");
        assert!(minutes.iter().any(|m| m["p50_ms"].is_u64()));

        assert_eq!(op.post("/v1/queues/work/resume", json!({})).await.json()["paused"], false);
        let r = w.post("/v1/queues/work/lease", json!({"worker": "w", "wait": 2})).await;
        assert_eq!(r.status, 200);

        // Queues are everyone's: an operator's to see and pause.
        s.client(Some("admin-a-key")).post("/v1/queues/work/pause", json!({})).await.problem(403);
        a.get("/v1/queues").await.problem(403);
        op.post("/v1/queues/nope/pause", json!({})).await.problem(404);
    }

    #[tokio::test]
    async fn job_lists_filter_and_refuse_bad_filters() {
        let Some(s) = TestServer::start(KEYS).await else { return };
        let a = s.client(Some("client-a-key"));
        let r = a
            .send(Method::POST, "/v1/jobs", &[("content-type", "application/json"), ("idempotency-key", "order-77")], Some(br#"{"queue":"work","input":{"customer":"Initech"}}"#.to_vec()))
            .await;
        let keyed = r.json()["id"].as_str().unwrap().to_string();
        a.submit("work", json!({"customer": "globex"})).await;
        let ids = |v: Value| -> Vec<String> { v["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect() };
        assert_eq!(ids(a.get("/v1/jobs?q=initech").await.json()), vec![keyed.clone()]);
        assert_eq!(ids(a.get("/v1/jobs?idempotency_key=order-77").await.json()), vec![keyed.clone()]);
        let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert!(ids(a.get(&format!("/v1/jobs?since={later}")).await.json()).is_empty());
        assert_eq!(ids(a.get(&format!("/v1/jobs?until={later}")).await.json()).len(), 2);
        a.get("/v1/jobs?since=monday").await.problem(400);
        a.get(&format!("/v1/jobs?q={}", "x".repeat(201))).await.problem(400);
        a.get("/v1/jobs?state=lost").await.problem(400);
    }

    #[tokio::test]
    async fn an_endpoint_is_paused_and_resumed_by_hand() {
        let Some(s) = TestServer::start(KEYS).await else { return };
        let url = "https://hooks.example/a";
        let admin = s.client(Some("admin-a-key"));
        assert_eq!(admin.post("/v1/endpoints/pause", json!({"url": url})).await.status, 200);
        let list = admin.get("/v1/endpoints").await.json();
        assert_eq!(list["endpoints"][0]["url"], url);
        assert_eq!(list["endpoints"][0]["paused"], true);
        assert_eq!(admin.post("/v1/endpoints/resume", json!({"url": url})).await.json()["released"], 0);
        s.client(Some("client-a-key")).post("/v1/endpoints/pause", json!({"url": url})).await.problem(403);
        s.client(Some("admin-all-key")).post("/v1/endpoints/pause", json!({"url": url})).await.problem(400);
        admin.post("/v1/endpoints/pause", json!({"url": ""})).await.problem(400);
    }

    #[tokio::test]
    async fn the_console_is_served_with_a_strict_policy() {
        let Some(s) = TestServer::start(KEYS).await else { return };
        let c = s.client(None);
        let r = c.get("/").await;
        assert_eq!((r.status.as_u16(), r.header("location").as_deref()), (307, Some("/ui/")));
        let r = c.get("/ui/").await;
        assert_eq!(r.status, 200);
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
        let html = String::from_utf8_lossy(&r.body).to_string();
        assert!(!html.contains("<script>") && !html.contains("style="), "nothing inline");
        let r = c.get("/ui/assets/app.js").await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/javascript"));
        let etag = r.header("etag").unwrap();
        let r = c.send(Method::GET, "/ui/assets/app.js", &[("if-none-match", &etag)], None).await;
        assert_eq!(r.status, 304);
        c.get("/ui/assets/nope.js").await.problem(404);
        assert_eq!(c.get("/ui/assets/..%2F..%2FCargo.toml").await.status, 404);
        c.get("/ui/session").await.problem(401);
    }
}
