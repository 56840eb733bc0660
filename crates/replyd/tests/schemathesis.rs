//! Issue 12, item 7: the OpenAPI document matches the server. Schemathesis
//! (PyPI) reads the real server's `/openapi.json`, generates requests from
//! it (examples, coverage, fuzzing, and stateful runs along its links) and
//! checks every answer: never a 5xx, every status and content type and
//! header documented, every body matching its schema.
//!
//! The server has a job in each state, so that the job routes answer more
//! than 404. Streams (`/v1/events`, a job's events, `/v1/ws`) are left out:
//! they are answered over time, and their own suites test them. Without
//! schemathesis the test skips, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`: then it fails.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Server, http};

const KEY: &str = "schemathesis-admin-key";

/// The schemathesis executable: the project's test environment's, or one
/// on the PATH.
fn schemathesis() -> Option<PathBuf> {
    let st = replyd_testkit::tool("schemathesis");
    std::process::Command::new(&st)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(st)
}

async fn call(server: &Server, method: reqwest::Method, path: &str, body: Value) -> Value {
    let r = http()
        .request(method, format!("{}{path}", server.url))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

/// A job in each state (queued, running, succeeded, failed), then a
/// backlog, so that leases find work at once instead of waiting (a
/// lease's `wait` may be up to 60 s, and the generated requests ask for
/// it).
async fn jobs(server: &Server) -> Vec<String> {
    let submit = || {
        call(
            server,
            reqwest::Method::POST,
            "/v1/jobs",
            json!({"queue": "work", "input": {"n": 1}}),
        )
    };
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(submit().await["id"].as_str().unwrap().to_string());
    }
    let lease = || {
        call(
            server,
            reqwest::Method::POST,
            "/v1/queues/work/lease",
            json!({"lease": 3600}),
        )
    };
    let (running, done, failed) = (lease().await, lease().await, lease().await);
    assert_eq!(running["job"]["id"], ids[0].as_str());
    let path =
        |l: &Value, what: &str| format!("/v1/jobs/{}/{what}", l["job"]["id"].as_str().unwrap());
    let result = json!({"lease_id": done["lease_id"], "result": {"ok": true}});
    call(
        server,
        reqwest::Method::POST,
        &path(&done, "complete"),
        result,
    )
    .await;
    let error = json!({"lease_id": failed["lease_id"], "error": "no", "retry": false});
    call(server, reqwest::Method::POST, &path(&failed, "fail"), error).await;
    use futures::StreamExt;
    futures::stream::iter(0..BACKLOG)
        .for_each_concurrent(32, |_| async {
            submit().await;
        })
        .await;
    ids
}

/// Jobs waiting to be leased when schemathesis starts.
const BACKLOG: usize = 3000;

#[tokio::test]
async fn the_server_answers_as_its_openapi_document_says() {
    let Some(st) = schemathesis() else {
        replyd_testkit::skip(
            "schemathesis",
            "run scripts/test, or pip install -r scripts/test-requirements.txt",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[api_keys]]\nkey = \"{KEY}\"\ntenant = \"st\"\nrole = \"admin\"\n\
         [queues.work]\nmax_attempts = 1\n[limits]\nsubmit_rate = 0\n"
    );
    let server = Server::start(dir.path(), Some(&config)).await;
    let ids = jobs(&server).await;
    let ids_toml = ids
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        dir.path().join("schemathesis.toml"),
        format!("[parameters]\nid = [{ids_toml}]\nqueue = \"work\"\n"),
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(&st)
            .current_dir(dir.path())
            .args([
                "--config-file",
                "schemathesis.toml",
                "run",
                &format!("{}/openapi.json", server.url),
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
                "--max-examples",
                "40",
                "--seed",
                "12",
                "--request-timeout",
                "70",
                // One worker: hypothesis's lambda descriptions are not
                // thread-safe (schemathesis 4.32 crashed with 4).
                "--workers",
                "1",
                "--exclude-path",
                "/v1/events",
                "--exclude-path",
                "/v1/jobs/{id}/events",
                "--exclude-path",
                "/v1/ws",
                "--no-color",
                "-H",
                &format!("Authorization: Bearer {KEY}"),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("schemathesis ran for 10 minutes")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let cases = text
        .lines()
        // "N generated, N passed" (warnings may say "generated" too).
        .find(|l| {
            l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains(" generated")
        })
        .unwrap_or("(no count)")
        .trim()
        .to_string();
    eprintln!("schemathesis: {cases}");
    assert!(
        out.status.success(),
        "schemathesis found answers the document does not describe:\n{text}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    assert!(cases.contains("passed"), "{text}");
}
