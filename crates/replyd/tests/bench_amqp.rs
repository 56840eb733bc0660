//! The AMQP benchmark runs: `replyd bench --scenarios amqp` briefly, with a
//! few clients, answers every round trip through replyd and through the
//! bare echo server, and prints both with their ratio (BENCHMARKS.md,
//! "Message brokers").
//!
//! Without RabbitMQ on 127.0.0.1:5672 the test skips, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "amqp")]

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_replyd");

#[test]
fn amqp_scenario_prints_its_figures() {
    if !replyd_testkit::service(
        "RabbitMQ",
        5672,
        "run scripts/test, or: rabbitmq-server -detached",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "bench",
            "--scenarios",
            "amqp",
            "--duration",
            "1",
            "--rounds",
            "1",
        ])
        .args(["--amqp-clients", "8"])
        .arg("--dir")
        .arg(dir.path())
        .env_remove("REPLYD_BENCH_AMQP_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run replyd bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    for row in ["bare lapin echo (ceiling)", "replyd (job + durable reply)"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(row))
            .unwrap_or_else(|| panic!("no {row:?} line in:\n{stdout}"));
        assert!(
            line.contains("round trips/s") && line.contains("p99"),
            "{line}"
        );
        assert!(line.contains(", 0 unanswered)"), "{line}");
        let done: usize = line
            .rsplit('(')
            .next()
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(done > 0, "{line}");
    }
    assert!(stdout.contains("ratio to ceiling:"), "{stdout}");
}
