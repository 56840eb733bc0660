//! The Durable Streams protocol's own conformance suite
//! (`@durable-streams/server-conformance-tests`, pinned in
//! `tests/durable-streams/package.json`) against `replyd serve`: every
//! case must pass. The counts are printed.
//!
//! Needs Node.js and `npm ci --prefix crates/replyd/tests/durable-streams`
//! (`scripts/test` runs it). Without them the test skips, saying why,
//! unless `REPLYD_REQUIRE_SERVICES=1`.

mod support;

use std::path::PathBuf;

use support::Server;

fn harness_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/durable-streams")
}

/// Why the suite cannot run here, if it cannot.
fn missing() -> Option<String> {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node is not installed".into());
    }
    let dir = harness_dir();
    if !dir
        .join("node_modules/@durable-streams/server-conformance-tests")
        .exists()
    {
        return Some(format!("run `npm ci --prefix {}`", dir.display()));
    }
    None
}

/// Long polls wait this long (the suite's own timeouts are a few seconds).
const CONFIG: &str = "[durable_streams]\nlong_poll = 3\n";

/// `Tests  N failed | M passed | K skipped (T)` from vitest's summary.
fn counts(out: &str) -> Option<(u32, u32, u32)> {
    let line = out.lines().find(|l| l.trim_start().starts_with("Tests "))?;
    let mut c = (0, 0, 0);
    for part in line.trim_start()["Tests ".len()..].split('|') {
        let mut words = part.split_whitespace();
        let n: u32 = words.next()?.parse().ok()?;
        match words.next()? {
            "failed" => c.0 = n,
            "passed" => c.1 = n,
            "skipped" => c.2 = n,
            _ => {}
        }
    }
    Some(c)
}

async fn run_suite(server: &Server, store: &str) {
    let out = tokio::process::Command::new("npx")
        .args(["vitest", "run", "conformance.test.mjs", "--reporter=dot"])
        .current_dir(harness_dir())
        .env("DS_URL", &server.url)
        .env("LONG_POLL_MS", "3000")
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("npx runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (failed, passed, skipped) =
        counts(&text).unwrap_or_else(|| panic!("no vitest summary in:\n{text}"));
    replyd_testkit::note(&format!(
        "Durable Streams conformance 0.3.6 on {store}: {passed} passed, {failed} failed, \
         {skipped} skipped (the suite's opt-in subscription cases)"
    ));
    let failures: Vec<&str> = text.lines().filter(|l| l.contains(" FAIL ")).collect();
    assert_eq!(
        failed,
        0,
        "failed cases:\n{}\n\n{text}",
        failures.join("\n")
    );
    assert!(
        passed >= 332,
        "the suite ran {passed} cases, fewer than its 332\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_of_the_conformance_suite_passes_on_sqlite() {
    if let Some(why) = missing() {
        replyd_testkit::skip(&why, "run scripts/test (it installs the npm packages)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(CONFIG)).await;
    run_suite(&server, "SQLite").await;
}

#[test]
fn vitest_summaries_are_read() {
    assert_eq!(
        counts(
            " Test Files  1 failed (1)\n      Tests  43 failed | 289 passed | 6 skipped (338)\n"
        ),
        Some((43, 289, 6))
    );
    assert_eq!(
        counts("      Tests  332 passed | 6 skipped (338)"),
        Some((0, 332, 6))
    );
    assert_eq!(counts("no summary"), None);
}

const KEYS: &str = "[[api_keys]]\nkey = \"key-of-a\"\ntenant = \"a\"\nrole = \"client\"\n\n\
[[api_keys]]\nkey = \"key-of-b\"\ntenant = \"b\"\nrole = \"client\"\n\n\
[[api_keys]]\nkey = \"key-of-w\"\ntenant = \"a\"\nrole = \"worker\"\n";

fn next_offset(r: &reqwest::Response) -> String {
    r.headers()["stream-next-offset"]
        .to_str()
        .unwrap()
        .to_string()
}

/// Streams belong to a tenant: another tenant's path is another stream,
/// and no key, a bad key or a read-only role cannot write.
#[tokio::test]
async fn streams_are_kept_apart_by_tenant_and_need_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(KEYS)).await;
    let http = support::http();
    let url = format!("{}/v1/stream/chat/1", server.url);
    let put = |key: &'static str, body: &'static str| {
        http.put(&url)
            .bearer_auth(key)
            .header("content-type", "text/plain")
            .body(body)
            .send()
    };
    assert_eq!(put("key-of-a", "from a").await.unwrap().status(), 201);
    let read = |key: &'static str| http.get(&url).bearer_auth(key).send();
    let b = read("key-of-b").await.unwrap();
    assert_eq!(b.status(), 404, "another tenant's stream is not there");
    assert_eq!(put("key-of-b", "from b").await.unwrap().status(), 201);
    let a = read("key-of-a").await.unwrap();
    assert_eq!(a.text().await.unwrap(), "from a");
    let b = read("key-of-b").await.unwrap();
    assert_eq!(b.text().await.unwrap(), "from b");
    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(read("nope").await.unwrap().status(), 401);
    let worker_write = http
        .post(&url)
        .bearer_auth("key-of-w")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        worker_write.status(),
        403,
        "a worker key may read, not write"
    );
    assert_eq!(read("key-of-w").await.unwrap().status(), 200);
    // Nothing the refused calls sent was appended.
    let a = read("key-of-a").await.unwrap();
    assert_eq!(a.text().await.unwrap(), "from a");
    // A job's output: its tenant's, like the job.
    let job: serde_json::Value = http
        .post(format!("{}/v1/jobs", server.url))
        .bearer_auth("key-of-a")
        .json(&serde_json::json!({"queue": "demo", "input": {"seconds": 0}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let output = format!(
        "{}/v1/jobs/{}/output",
        server.url,
        job["id"].as_str().unwrap()
    );
    let status = |r: reqwest::Response| r.status();
    assert_eq!(status(http.get(&output).send().await.unwrap()), 401);
    let other = http
        .get(&output)
        .bearer_auth("key-of-b")
        .send()
        .await
        .unwrap();
    assert_eq!(
        status(other),
        404,
        "another tenant's job, as if there were none"
    );
    let own = http
        .get(&output)
        .bearer_auth("key-of-a")
        .send()
        .await
        .unwrap();
    assert_eq!(status(own), 200);
    let append = http
        .post(&output)
        .bearer_auth("key-of-a")
        .header("lease-id", "anything")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(status(append), 403, "a client key does not work jobs");
}

/// Every acknowledged append survives a SIGKILL of the server, and a
/// reader resumes from its offset with no gap and no repeat; a long-poll
/// reader is woken by an append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_a_crash_and_readers_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), None).await;
    let http = support::http();
    let url = format!("{}/v1/stream/tokens", server.url);
    let r = http
        .put(&url)
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // A long poll at the tail, answered by the append that follows it.
    let tail = next_offset(&r);
    let poll = tokio::spawn({
        let http = http.clone();
        let u = format!("{url}?offset={tail}&live=long-poll");
        async move { http.get(u).send().await.unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut sent = String::new();
    let mut reader_at = String::new();
    for i in 0..50 {
        let chunk = format!("tok{i} ");
        let r = http
            .post(&url)
            .header("content-type", "text/plain")
            .body(chunk.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        sent.push_str(&chunk);
        if i == 24 {
            reader_at = next_offset(&r);
        }
    }
    let polled = poll.await.unwrap();
    assert_eq!(polled.status(), 200);
    assert!(polled.text().await.unwrap().starts_with("tok0 "));
    server.signal(nix::sys::signal::Signal::SIGKILL);
    server.wait_exit(std::time::Duration::from_secs(10)).await;
    let server = Server::start_at(
        dir.path(),
        None,
        &["--db", &support::db_path(dir.path()).display().to_string()],
        &server.addr.to_string(),
    )
    .await;
    let url = format!("{}/v1/stream/tokens", server.url);
    let all = http.get(format!("{url}?offset=-1")).send().await.unwrap();
    assert_eq!(all.text().await.unwrap(), sent, "every acknowledged append");
    let rest = http
        .get(format!("{url}?offset={reader_at}"))
        .send()
        .await
        .unwrap();
    let expected: String = (25..50).map(|i| format!("tok{i} ")).collect();
    assert_eq!(rest.text().await.unwrap(), expected, "resumed exactly");
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_case_of_the_conformance_suite_passes_on_postgres() {
        if let Some(why) = missing() {
            replyd_testkit::skip(&why, "run scripts/test (it installs the npm packages)");
            return;
        }
        let Some(db) = replyd_store::postgres::testing::fresh_schema("dsconf").await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_on(dir.path(), Some(CONFIG), &["--database-url", &db]).await;
        run_suite(&server, "PostgreSQL").await;
    }

    /// Two nodes on one database, no sticky sessions: a stream created on
    /// one is appended on the other, and a reader on the first, long
    /// polling or on SSE, gets each append live with the same offsets.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_on_one_node_is_read_live_on_another() {
        let Some(db) = replyd_store::postgres::testing::fresh_schema("dsnodes").await else {
            return;
        };
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Server::start_on(a_dir.path(), Some(CONFIG), &["--database-url", &db]).await;
        let b = Server::start_on(b_dir.path(), Some(CONFIG), &["--database-url", &db]).await;
        let http = support::http();
        let on = |s: &Server| format!("{}/v1/stream/shared", s.url);
        let r = http
            .put(on(&a))
            .header("content-type", "text/plain")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let tail = next_offset(&r);
        let poll = tokio::spawn({
            let http = http.clone();
            let u = format!("{}?offset={tail}&live=long-poll", on(&a));
            async move { http.get(u).send().await.unwrap() }
        });
        let mut sse = http
            .get(format!("{}?offset={tail}&live=sse", on(&a)))
            .send()
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let appended = http
            .post(on(&b))
            .header("content-type", "text/plain")
            .body("from b")
            .send()
            .await
            .unwrap();
        assert_eq!(appended.status(), 204);
        let after = next_offset(&appended);
        let polled = tokio::time::timeout(std::time::Duration::from_secs(2), poll)
            .await
            .expect("the long poll on node A is answered at once, not at its timeout")
            .unwrap();
        assert_eq!(polled.status(), 200);
        assert_eq!(
            next_offset(&polled),
            after,
            "the same offsets on both nodes"
        );
        assert_eq!(polled.text().await.unwrap(), "from b");
        let mut seen = String::new();
        while !seen.contains(&after) {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(2), sse.chunk())
                .await
                .expect("SSE on node A gets node B's append live")
                .unwrap()
                .expect("the SSE stream stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(seen.contains("data:from b"), "{seen}");
    }
}

/// What a tenant's streams may hold is bounded: streams kept, bytes per
/// stream, appends per second (429 with RateLimit headers); a refused
/// write leaves the stream as it was.
#[tokio::test]
async fn streams_are_bounded_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[durable_streams]\nmax_streams_per_tenant = 2\nmax_stream_bytes = 10\n\n\
                  [limits]\nappend_rate = 0.5\nappend_burst = 6\n";
    let server = Server::start(dir.path(), Some(config)).await;
    let http = support::http();
    let url = |p: &str| format!("{}/v1/stream/{p}", server.url);
    let put = |p: &str| {
        http.put(url(p))
            .header("content-type", "text/plain")
            .body("0123456789")
            .send()
    };
    assert_eq!(put("one").await.unwrap().status(), 201);
    assert_eq!(put("two").await.unwrap().status(), 201);
    let third = put("three").await.unwrap();
    assert_eq!(third.status(), 403, "a third stream is over the quota");
    let over = http
        .post(url("one"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 413, "an eleventh byte is too many");
    let body = http
        .get(url("one"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "0123456789", "nothing of the refused append was kept");
    // Every PUT and POST takes a token from a bucket of six, refilled at
    // one every two seconds: within four more, one is refused.
    let mut limited = None;
    for _ in 0..4 {
        let r = http.delete(url("two")).send().await.unwrap();
        assert_ne!(r.status(), 429, "deletes are not appends");
        let r = http
            .post(url("one"))
            .header("content-type", "text/plain")
            .header("stream-closed", "true")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("appends past the bucket are refused");
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        r.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with("append;q=6")
    );
}

/// What one tenant's streams hold in all is bounded
/// (`durable_streams.max_tenant_bytes`, job outputs included): past it an
/// append or a create with a body is 403 and keeps nothing; another
/// tenant is not held back; after a restart the bound is read back from
/// the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_tenants_streams_hold_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::db_path(dir.path()).display().to_string();
    let config = format!("{KEYS}\n[durable_streams]\nmax_tenant_bytes = 3000\n");
    let server = Server::start(dir.path(), Some(&config)).await;
    let http = support::http();
    let send = |key: &'static str, path: &str, body: usize| {
        http.post(format!("{}/v1/stream/{path}", server.url))
            .bearer_auth(key)
            .header("content-type", "text/plain")
            .body("x".repeat(body))
            .send()
    };
    let create = |key: &'static str, path: &str| {
        http.put(format!("{}/v1/stream/{path}", server.url))
            .bearer_auth(key)
            .header("content-type", "text/plain")
            .send()
    };
    for p in ["a1", "a2"] {
        assert_eq!(create("key-of-a", p).await.unwrap().status(), 201);
    }
    assert_eq!(create("key-of-b", "b1").await.unwrap().status(), 201);
    assert_eq!(send("key-of-a", "a1", 2000).await.unwrap().status(), 204);
    let over = send("key-of-a", "a2", 1500).await.unwrap();
    assert_eq!(over.status(), 403);
    let problem: serde_json::Value = over.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("max_tenant_bytes"),
        "{problem}"
    );
    let a2 = http
        .get(format!("{}/v1/stream/a2?offset=-1", server.url))
        .bearer_auth("key-of-a")
        .send()
        .await
        .unwrap();
    assert_eq!(a2.text().await.unwrap(), "", "nothing was kept");
    assert_eq!(send("key-of-a", "a2", 900).await.unwrap().status(), 204);
    assert_eq!(
        send("key-of-b", "b1", 2500).await.unwrap().status(),
        204,
        "another tenant's bytes are its own"
    );
    // A restart: the sums come back from the store (within 5 s).
    let addr = server.addr.to_string();
    let mut server = server;
    server.signal(nix::sys::signal::Signal::SIGTERM);
    server
        .wait_exit(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let server = Server::start_at(dir.path(), Some(&config), &["--db", &db], &addr).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = http
            .post(format!("{}/v1/stream/a1", server.url))
            .bearer_auth("key-of-a")
            .header("content-type", "text/plain")
            .body("x".repeat(200))
            .send()
            .await
            .unwrap();
        if r.status() == 403 {
            break;
        }
        assert_eq!(r.status(), 204);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bound was not read back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A job's output: appended by the worker holding its lease (a stale or
/// missing lease appends nothing), read with the protocol by the job's
/// token, a long-poll reader woken by the append, and closed for readers
/// when the job ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_output_is_read_live_with_the_job_token_and_ends_with_the_job() {
    let (_dir, server) = pull_server().await;
    let http = support::http();
    let base = &server.url;
    let job = submit(&http, base, "work").await;
    let id = job["id"].as_str().unwrap().to_string();
    let output = job["links"]["output"].as_str().unwrap().to_string();
    assert!(output.contains("access_token=jt_"), "{output}");
    let output = format!("{base}{output}");
    let sep = |u: &str| if u.contains('?') { '&' } else { '?' };
    // Before any append: an empty, open stream.
    let r = http.get(&output).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["stream-up-to-date"], "true");
    assert!(!r.headers().contains_key("stream-closed"));
    let tail = next_offset(&r);
    let poll = tokio::spawn({
        let (http, u) = (
            http.clone(),
            format!("{output}{}offset={tail}&live=long-poll", sep(&output)),
        );
        async move { http.get(u).send().await.unwrap() }
    });
    let lease_id = lease(&http, base, "work").await["lease_id"]
        .as_str()
        .unwrap()
        .to_string();
    let append = |lease: &str, body: &'static str| {
        http.post(format!("{base}/v1/jobs/{id}/output"))
            .header("lease-id", lease)
            .header("content-type", "text/plain")
            .body(body)
            .send()
    };
    assert_eq!(append("not-the-lease", "x").await.unwrap().status(), 409);
    let no_lease = http
        .post(format!("{base}/v1/jobs/{id}/output"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(no_lease.status(), 400);
    assert_eq!(append(&lease_id, "Hello, ").await.unwrap().status(), 204);
    let polled = poll.await.unwrap();
    assert_eq!(polled.status(), 200);
    assert_eq!(polled.text().await.unwrap(), "Hello, ");
    assert_eq!(append(&lease_id, "world").await.unwrap().status(), 204);
    let done = http
        .post(format!("{base}/v1/jobs/{id}/complete"))
        .json(&serde_json::json!({"lease_id": lease_id, "result": {"ok": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert_eq!(
        append(&lease_id, "late").await.unwrap().status(),
        409,
        "an ended job's output takes no more"
    );
    let all = http
        .get(format!("{output}{}offset=-1", sep(&output)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        all.headers()["stream-closed"],
        "true",
        "closed with its job"
    );
    assert_eq!(all.text().await.unwrap(), "Hello, world");
    // Another tenant's or no credentials: nothing.
    let bare = format!("{base}/v1/jobs/{id}/output");
    let anonymous_ok = http.get(&bare).send().await.unwrap();
    assert_eq!(anonymous_ok.status(), 200, "open mode: anyone");
    // A /v1/stream/ path cannot reach a job's output.
    let reserved = http
        .get(format!("{base}/v1/stream/__jobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(reserved.status(), 404);
}

/// Submits a job with no input to `queue`: its representation.
async fn submit(http: &reqwest::Client, base: &str, queue: &str) -> serde_json::Value {
    let r = http
        .post(format!("{base}/v1/jobs"))
        .json(&serde_json::json!({"queue": queue, "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

/// Completes job `id` under `lease` with no result of its own: the status.
async fn complete(http: &reqwest::Client, base: &str, id: &str, lease: &str) -> u16 {
    http.post(format!("{base}/v1/jobs/{id}/complete"))
        .json(&serde_json::json!({"lease_id": lease}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A server with a pull queue `work` (and the folder it keeps its data in).
async fn pull_server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = "[queues.work]\nexecutor = \"pull\"\ntimeout = 60\n";
    let server = Server::start(dir.path(), Some(config)).await;
    (dir, server)
}

/// Leases a job of `queue` (a pull queue) as worker `w1`: the answer.
async fn lease(http: &reqwest::Client, base: &str, queue: &str) -> serde_json::Value {
    http.post(format!("{base}/v1/queues/{queue}/lease"))
        .json(&serde_json::json!({"worker": "w1", "wait": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Submits a job to `queue` (a pull queue) and leases it: its id and the
/// lease's.
async fn submit_and_lease(http: &reqwest::Client, base: &str, queue: &str) -> (String, String) {
    let job = submit(http, base, queue).await;
    let lease = lease(http, base, queue).await;
    assert_eq!(lease["job"]["id"], job["id"]);
    (
        job["id"].as_str().unwrap().to_string(),
        lease["lease_id"].as_str().unwrap().to_string(),
    )
}

/// A worker that streams its output and completes with no result of its
/// own: the output is the job's result, with the output's content type.
#[tokio::test]
async fn a_job_with_only_output_has_it_as_its_result() {
    let (_dir, server) = pull_server().await;
    let http = support::http();
    let base = &server.url;
    let (id, lease_id) = submit_and_lease(&http, base, "work").await;
    let lease_id = lease_id.as_str();
    for chunk in ["data: one\n\n", "data: two\n\n"] {
        let r = http
            .post(format!("{base}/v1/jobs/{id}/output"))
            .header("lease-id", lease_id)
            .header("content-type", "text/event-stream")
            .body(chunk)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    assert_eq!(complete(&http, base, &id, lease_id).await, 200);
    let result = http
        .get(format!("{base}/v1/jobs/{id}/result"))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    assert_eq!(result.headers()["content-type"], "text/event-stream");
    assert_eq!(result.text().await.unwrap(), "data: one\n\ndata: two\n\n");
}

/// `exec` with `stream_output`: the command's stdout reaches the job's
/// output while it runs (a reader has the first line before the second is
/// printed), all of it before the job's end closes the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_commands_stdout_streams_to_the_jobs_output_as_it_comes() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[queues.talk]\nexecutor = \"exec\"\n\
                  command = [\"sh\", \"-c\", \"echo one; sleep 1; echo two\"]\n\
                  stream_output = \"text/plain\"\n";
    let server = Server::start(dir.path(), Some(config)).await;
    let http = support::http();
    let base = &server.url;
    let job = submit(&http, base, "talk").await;
    let id = job["id"].as_str().unwrap();
    let output = format!("{base}/v1/jobs/{id}/output");
    let first = http
        .get(format!(
            "{output}?offset=0000000000000000_0000000000000000&live=long-poll"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert!(
        !first.headers().contains_key("stream-closed"),
        "still running"
    );
    assert_eq!(first.text().await.unwrap(), "one\n");
    let mut body = String::new();
    for _ in 0..100 {
        let r = http
            .get(format!("{output}?offset=-1"))
            .send()
            .await
            .unwrap();
        let closed = r.headers().contains_key("stream-closed");
        body = r.text().await.unwrap();
        if closed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        body, "one\ntwo\n",
        "all of stdout, then closed with the job"
    );
}

/// `"output": {"content_type": …}` on submit fixes the output's content
/// type before any append: readers see it at once, an append of another
/// type is refused (409) and appends nothing; a content type that is not
/// one is 400 and makes no job.
#[tokio::test]
async fn a_submission_names_its_outputs_content_type() {
    let (_dir, server) = pull_server().await;
    let http = support::http();
    let base = &server.url;
    for bad in [
        serde_json::json!({"content_type": "markdown"}),
        serde_json::json!({"content_type": "text/plain\r\nx: y"}),
        serde_json::json!({"content_type": "text/plain", "other": 1}),
    ] {
        let r = http
            .post(format!("{base}/v1/jobs"))
            .json(&serde_json::json!({"queue": "work", "input": {}, "output": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let listed: serde_json::Value = http
        .get(format!("{base}/v1/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(0), "{listed}");
    let r = http
        .post(format!("{base}/v1/jobs"))
        .json(&serde_json::json!({"queue": "work", "input": {},
                                  "output": {"content_type": "text/markdown"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = http
        .get(format!("{base}/v1/jobs/{id}/output?offset=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(before.headers()["content-type"], "text/markdown");
    let leased = lease(&http, base, "work").await;
    let lease_id = leased["lease_id"].as_str().unwrap();
    let append = |ct: &'static str, body: &'static str| {
        http.post(format!("{base}/v1/jobs/{id}/output"))
            .header("lease-id", lease_id)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    assert_eq!(append("text/plain", "no").await.unwrap().status(), 409);
    assert_eq!(
        append("text/markdown", "# yes").await.unwrap().status(),
        204
    );
    let all = http
        .get(format!("{base}/v1/jobs/{id}/output?offset=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(all.headers()["content-type"], "text/markdown");
    assert_eq!(all.text().await.unwrap(), "# yes");
}

/// The Durable Streams client in Node (`@durable-streams/client`,
/// `tests/durable-streams/read_output.mjs`) follows a job's output live,
/// with the job token of `links.output`, from the start and from an
/// offset in the middle, to the job's end: both byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_client_follows_a_jobs_output_live_to_its_end() {
    if let Some(why) = missing() {
        replyd_testkit::skip(&why, "run scripts/test (it installs the npm packages)");
        return;
    }
    let (_dir, server) = pull_server().await;
    let http = support::http();
    let base = server.url.clone();
    let job = submit(&http, &base, "work").await;
    let id = job["id"].as_str().unwrap().to_string();
    let output = format!("{base}{}", job["links"]["output"].as_str().unwrap());
    let lease_id = lease(&http, &base, "work").await["lease_id"]
        .as_str()
        .unwrap()
        .to_string();
    let append = |text: String| {
        http.post(format!("{base}/v1/jobs/{id}/output"))
            .header("lease-id", &lease_id)
            .header("content-type", "text/plain")
            .body(text)
            .send()
    };
    // Something before the readers start, to resume in the middle of.
    assert_eq!(append("first ".into()).await.unwrap().status(), 204);
    let read = |offset: &str| {
        tokio::process::Command::new("node")
            .arg(harness_dir().join("read_output.mjs"))
            .args([output.as_str(), offset])
            .current_dir(harness_dir())
            .output()
    };
    let middle = format!("{:016}_{:016}", 0, "first ".len());
    let (from_start, from_middle, ()) = tokio::join!(read("-1"), read(&middle), async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        for i in 0..40 {
            let r = append(format!("token{i} ")).await.unwrap();
            assert_eq!(r.status(), 204);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(complete(&http, &base, &id, &lease_id).await, 200);
    });
    let tokens: String = (0..40).map(|i| format!("token{i} ")).collect();
    for (out, want) in [
        (from_start.unwrap(), format!("first {tokens}")),
        (from_middle.unwrap(), tokens.clone()),
    ] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["text"], want);
        assert!(got["batches"].as_u64().unwrap() > 1, "read live: {got}");
    }
}

/// A live SSE read lasts `durable_streams.sse_lifetime` at most, then the
/// server ends it (its last control event says where to go on from), so
/// that a client reconnects from its offset and no reader holds a
/// connection forever.
#[tokio::test]
async fn an_sse_read_ends_after_its_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[durable_streams]\nsse_lifetime = 1\n";
    let server = Server::start(dir.path(), Some(config)).await;
    let http = support::http();
    let url = format!("{}/v1/stream/quiet", server.url);
    let r = http
        .put(&url)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let started = std::time::Instant::now();
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        http.get(format!("{url}?offset=-1&live=sse"))
            .send()
            .await
            .unwrap()
            .text(),
    )
    .await
    .expect("the server ends the read")
    .unwrap();
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(900), "{took:?}");
    assert!(body.contains("data:hello"), "{body}");
    let offset = format!("{:016}_{:016}", 0, 5);
    assert!(body.contains(&offset), "{body}");
    assert!(
        !body.contains("streamClosed"),
        "the stream itself stays open: {body}"
    );
}
