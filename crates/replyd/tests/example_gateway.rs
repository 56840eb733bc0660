//! `examples/slow-reports` works as its README says: the slow service,
//! replyd with the example's `replyd.toml` in front of it (on free ports,
//! the service quick), a POST answered 202 + Location, a poll answered 202
//! with Retry-After, then the service's answer replayed at the result,
//! and `replyd wait` following it.

mod support;

use support::{Server, http};

const BIN: &str = env!("CARGO_BIN_EXE_replyd");

fn example(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/slow-reports")
        .join(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slow_reports_example_works_as_its_readme_says() {
    let (mut service, port) =
        support::example_service(&example("slow_report_service.py"), &["--delay", "1.5"]).await;

    let config = std::fs::read_to_string(example("replyd.toml"))
        .unwrap()
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{port}"));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db").display().to_string();
    let server = Server::start_on(dir.path(), Some(&config), &["--db", &db]).await;
    let c = http();
    let r = c
        .post(format!("{}/reports/sales?month=2024-05", server.url))
        .header("content-type", "application/json")
        .body(r#"{"region": "eu"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("retry-after"));
    let r = c
        .get(format!("{}{location}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "the report takes 1.5 s");
    assert!(r.headers().contains_key("retry-after"));

    // `replyd wait` follows it to the end.
    let id = location.trim_start_matches("/v1/jobs/");
    let waited = tokio::process::Command::new(BIN)
        .args(["wait", id, "--server", &server.url])
        .output()
        .await
        .unwrap();
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );

    let r = c
        .get(format!("{}{location}/result", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "the service's own status");
    assert_eq!(r.headers()["content-type"], "text/csv");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"sales.csv\""
    );
    assert_eq!(
        r.text().await.unwrap(),
        "report,month,region,total\nsales,2024-05,eu,42\n"
    );
    let _ = service.kill().await;
}
