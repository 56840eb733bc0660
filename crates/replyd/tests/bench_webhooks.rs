//! The webhooks benchmark runs: `replyd bench --scenarios webhooks` with a
//! few jobs delivers every one of them, in each of the three receiver
//! cases, for replyd and for the bare client, and prints the figures
//! (BENCHMARKS.md, "Webhooks").

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_replyd");

#[test]
fn webhooks_scenario_prints_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["bench", "--scenarios", "webhooks"])
        .args(["--webhook-jobs", "40", "--webhook-rate", "40"])
        .args(["--webhook-concurrency", "8"])
        .arg("--dir")
        .arg(dir.path())
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
            panic!("replyd bench --scenarios webhooks did not finish within 180 s");
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
    // Per case: a drain and a steady line for each of replyd and the
    // ceiling; every delivery arrived.
    let drains: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("deliveries/s"))
        .collect();
    assert_eq!(drains.len(), 6, "{stdout}");
    for line in &drains {
        assert!(line.contains("all 40 delivered"), "{line}\n{stdout}");
    }
    // (b) answers 500 to every tenth request. Delivering all 40 takes 44
    // requests (44 - 44/10 = 40), whatever the order. Which of them fail
    // depends on how retries interleave with first attempts: the ceiling
    // retries at once, so a retry may take a tenth number. Request 10 is
    // always a first attempt, so 36 to 39 first attempts succeed.
    for line in &drains[2..4] {
        assert!(line.contains("(44 requests)"), "{line}");
        let first_pass = first_pass(line);
        assert!((36..=39).contains(&first_pass), "{line}");
    }
    for line in drains[..2].iter().chain(&drains[4..]) {
        assert!(
            line.contains("(40 first pass)") && line.contains("(40 requests)"),
            "{line}"
        );
    }
    let steady: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" delivered)"))
        .collect();
    assert_eq!(steady.len(), 6, "{stdout}");
    for line in steady {
        assert!(line.contains("p50") && line.contains("p99"), "{line}");
        assert!(!line.contains("NaN"), "{line}");
    }
    assert!(stdout.contains("case (a): ratio"), "{stdout}");
}

/// The number in a drain line's "(N first pass)".
fn first_pass(line: &str) -> u64 {
    let end = line
        .find(" first pass)")
        .unwrap_or_else(|| panic!("no first pass in {line}"));
    let start = line[..end].rfind('(').expect("an opening parenthesis") + 1;
    line[start..end]
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {line}"))
}
