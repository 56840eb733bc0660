//! The streams benchmark runs: `replyd bench --scenarios streams` at a small
//! C starts replyd and the bare SSE floor in their own processes, opens
//! SSE streams and WebSockets from several source addresses, completes
//! every job and prints the figures (BENCHMARKS.md, "Live channels").

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_replyd");

#[test]
fn streams_scenario_prints_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["bench", "--scenarios", "streams", "--stream-conns", "50"])
        .arg("--dir")
        .arg(dir.path())
        .env_remove("REPLYD_BENCH_DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replyd bench");
    // A hung bench must fail the test, not the CI run.
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("replyd bench --scenarios streams did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for row in ["replyd SSE", "replyd WebSocket", "bare hyper SSE (floor)"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(row))
            .unwrap_or_else(|| panic!("no {row:?} line in:\n{stdout}"));
        assert!(
            line.contains("KiB/conn") && line.contains("p50") && line.contains("p99"),
            "{line}"
        );
        // Every job of the run was completed, and every client saw it.
        let arrived = if row.starts_with("bare") { 100 } else { 50 };
        assert!(
            line.contains(&format!("({arrived} arrived, 0 missing")),
            "{line}\n{stdout}\n{stderr}"
        );
    }
    assert!(stdout.contains("ratio to floor: RSS"), "{stdout}");
    assert!(stdout.contains("per idle connection"), "{stdout}");
}
