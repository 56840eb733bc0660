//! `examples/slow-reports` works as its README says: the slow service,
//! replyd with the example's `replyd.toml` in front of it (on free ports,
//! the service quick), a POST answered 202 + Location, a poll answered 202
//! with Retry-After, then the service's answer replayed at the result,
//! and `replyd wait` following it.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{Server, http};

const BIN: &str = env!("CARGO_BIN_EXE_replyd");

fn example(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/slow-reports")
        .join(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slow_reports_example_works_as_its_readme_says() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut service = tokio::process::Command::new(replyd_testkit::python())
        .arg(example("slow_report_service.py"))
        .args(["--port", &port.to_string(), "--delay", "1.5"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the example service");
    // Up once it says so.
    let mut out = tokio::io::BufReader::new(service.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(line.contains("listening"), "{line}");

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
