//! `examples/llm-gateway` works as its README says, checked with the
//! official `openai` package and the `durable-streams` client
//! (`check_client.py`): replyd in front of an OpenAI-compatible model
//! server (`fake_llm.py`, which streams its tokens slowly), a streamed
//! completion passed through chunk for chunk, a dropped client reattaching
//! byte-exact with one model call in all, a repeated request replayed,
//! `Prefer: respond-async`, and a cancel that closes the model's
//! connection.

mod support;

use std::time::Duration;

use support::Server;

fn example(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/llm-gateway")
        .join(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_client_streams_through_replyd_and_reattaches_byte_exact() {
    if !replyd_testkit::python_has(
        "openai, durable_streams, httpx",
        "openai and durable-streams",
    ) {
        return;
    }
    let (mut model, port) = support::example_service(
        &example("fake_llm.py"),
        &["--tokens", "40", "--delay", "0.05"],
    )
    .await;

    let config = std::fs::read_to_string(example("replyd.toml"))
        .unwrap()
        .replace("127.0.0.1:9100", &format!("127.0.0.1:{port}"));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db").display().to_string();
    let server = Server::start_on(dir.path(), Some(&config), &["--db", &db]).await;
    let checked = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(replyd_testkit::python())
            .arg(example("check_client.py"))
            .args(["--replyd", &server.url])
            .args(["--upstream", &format!("http://127.0.0.1:{port}")])
            .output(),
    )
    .await
    .expect("the client's checks end within 2 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    for step in ["1. ", "2. ", "3. ", "4. ", "5. "] {
        assert!(stdout.contains(step), "step {step} ran: {stdout}");
    }
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    let _ = model.kill().await;
}
