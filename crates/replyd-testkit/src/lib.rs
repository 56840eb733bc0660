//! What replyd's test suites share about the machine they run on: where
//! the project's own test tools are (its `.venv`, set up by
//! `scripts/test`), whether a missing prerequisite may be skipped, and a
//! record of every test that skipped, so that a skip never reads as a
//! pass.
//!
//! - `REPLYD_REQUIRE_SERVICES=1`: a missing prerequisite fails the test.
//! - `REPLYD_SKIP_LOG=FILE`: each skip appends a line to FILE (the test,
//!   what is missing, how to get it); `scripts/test` prints them after the
//!   run and fails unless asked to allow skips.
//! - `REPLYD_NOTE_LOG=FILE`: figures a test reports ([`note`]: a
//!   conformance suite's counts) are appended to FILE; `scripts/test`
//!   prints them with its summary.
//! - `REPLYD_TEST_RESTARTS=1`: the tests that stop and start a shared
//!   service (RabbitMQ, Mosquitto, NATS, PostgreSQL) run; `scripts/test`
//!   sets it unless `--no-restarts`.
//!
//! Without any of these (a plain `cargo test`), a test whose prerequisite
//! is missing says `skipped: …` on stderr and returns.

use std::io::Write;
use std::path::PathBuf;

/// Whether every prerequisite must be present (`REPLYD_REQUIRE_SERVICES=1`).
pub fn required() -> bool {
    std::env::var("REPLYD_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// The running test skips: `missing` is what it needs, `how` how to get
/// it. Fails the test instead when prerequisites are required; else
/// records the skip and says so on stderr. The caller then returns.
pub fn skip(missing: &str, how: &str) {
    assert!(!required(), "{missing} (REPLYD_REQUIRE_SERVICES=1): {how}");
    let test = test_name();
    eprintln!("skipped: {test}: {missing} ({how})");
    if let Some(log) = std::env::var_os("REPLYD_SKIP_LOG") {
        let line = format!("{test}\t{missing}\t{how}\n").replace(['\r'], " ");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            // One write per line: appends of a line do not interleave.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Reports a figure of the running test (a suite's counts): on stderr,
/// and in `REPLYD_NOTE_LOG` for the run's summary.
pub fn note(what: &str) {
    let line = format!("{}: {}\n", test_name(), what.replace(['\r', '\n'], " "));
    eprint!("{line}");
    if let Some(log) = std::env::var_os("REPLYD_NOTE_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// `binary::test`: the test binary (without cargo's hash) and the test's
/// thread name, which libtest sets to the test's path.
fn test_name() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => s,
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    match thread.name() {
        Some(name) if name != "main" => format!("{binary}::{name}"),
        _ => binary,
    }
}

/// Whether a test that stops and starts `service` may run
/// (`REPLYD_TEST_RESTARTS=1`); when not, it is recorded as skipped.
pub fn may_restart(service: &str) -> bool {
    if std::env::var("REPLYD_TEST_RESTARTS").as_deref() == Ok("1") {
        return true;
    }
    skip(
        &format!("permission to stop and start {service}"),
        "run scripts/test (it sets REPLYD_TEST_RESTARTS=1), or set it yourself",
    );
    false
}

/// The workspace's root folder.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A program of the project's test environment (`.venv/bin/NAME`, made by
/// `scripts/test`) if it is there, else `NAME` from the PATH.
pub fn tool(name: &str) -> PathBuf {
    let local = root().join(".venv/bin").join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

/// The Python the tests drive clients with: the project's `.venv`'s, else
/// `python3`.
pub fn python() -> PathBuf {
    tool("python3")
}

/// Whether that Python can import `module` (from the PyPI package
/// `package`); when not, the test is recorded as skipped.
pub fn python_has(module: &str, package: &str) -> bool {
    let ok = std::process::Command::new(python())
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(
            &format!("Python with {package}"),
            "run scripts/test, or pip install -r scripts/test-requirements.txt",
        );
    }
    ok
}

/// Whether something listens on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Whether `what` listens on 127.0.0.1:`port`; when not, the test is
/// recorded as skipped (`how` starts it).
pub fn service(what: &str, port: u16, how: &str) -> bool {
    let up = port_open(port);
    if !up {
        skip(&format!("{what} on 127.0.0.1:{port}"), how);
    }
    up
}
