//! `examples/llm-gateway` works as its README says, checked with the
//! official `openai` package and the `durable-streams` client
//! (`check_client.py`): replyd in front of an OpenAI-compatible model
//! server (`fake_llm.py`, which streams its tokens slowly), a streamed
//! completion passed through chunk for chunk, a dropped client reattaching
//! byte-exact with one model call in all, a repeated request replayed,
//! `Prefer: respond-async`, and a cancel that closes the model's
//! connection.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::Server;

fn example(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/llm-gateway")
        .join(file)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_client_streams_through_replyd_and_reattaches_byte_exact() {
    if !replyd_testkit::python_has(
        "openai, durable_streams, httpx",
        "openai and durable-streams",
    ) {
        return;
    }
    let port = free_port();
    let mut model = tokio::process::Command::new(replyd_testkit::python())
        .arg(example("fake_llm.py"))
        .args([
            "--port",
            &port.to_string(),
            "--tokens",
            "40",
            "--delay",
            "0.05",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the example's model server");
    let mut out = tokio::io::BufReader::new(model.stdout.take().unwrap());
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
