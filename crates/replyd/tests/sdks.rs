//! The SDKs in `clients/` (issue 17) run their own suites against this
//! build's `replyd` (`REPLYD_BIN`): the Python package's pytest suite and
//! the TypeScript package's `node --test` suite (its browser case in
//! headless Chromium). Their counts are printed; a case the suite skipped
//! fails the run here, as a skip of ours would.
//!
//! Needs what `scripts/test` installs: the `.venv` (pytest, httpx,
//! httpx-sse, the OpenTelemetry SDK) and `npm ci --prefix
//! clients/typescript`. Without them the test skips, saying why.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    replyd_testkit::root()
}

/// Runs `cmd`; its exit status and everything it printed.
fn run(mut cmd: Command) -> (bool, String) {
    let out = cmd
        .env("REPLYD_BIN", env!("CARGO_BIN_EXE_replyd"))
        .env("NO_COLOR", "1")
        .output()
        .expect("the suite starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// pytest's last summary line's counts: (passed, failed + errors, skipped).
fn pytest_counts(out: &str) -> Option<(u32, u32, u32)> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains(" passed") || l.contains(" failed") || l.contains(" error"))?;
    let mut c = (0, 0, 0);
    let words: Vec<&str> = line
        .split(|ch: char| ch == ',' || ch.is_whitespace() || ch == '=')
        .filter(|w| !w.is_empty())
        .collect();
    for pair in words.windows(2) {
        let Ok(n) = pair[0].parse::<u32>() else {
            continue;
        };
        match pair[1] {
            "passed" => c.0 += n,
            "failed" | "error" | "errors" => c.1 += n,
            "skipped" => c.2 += n,
            _ => {}
        }
    }
    Some(c)
}

/// `node --test`'s closing counts: (passed, failed + cancelled, skipped +
/// todo).
fn node_counts(out: &str) -> Option<(u32, u32, u32)> {
    let get = |key: &str| -> Option<u32> {
        out.lines()
            .rev()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("ℹ {key} "))
                    .or_else(|| l.trim().strip_prefix(&format!("# {key} ")))
            })
            .and_then(|n| n.trim().parse().ok())
    };
    Some((
        get("pass")?,
        get("fail")? + get("cancelled").unwrap_or(0),
        get("skipped").unwrap_or(0) + get("todo").unwrap_or(0),
    ))
}

fn judge(sdk: &str, ok: bool, counts: Option<(u32, u32, u32)>, text: &str) {
    let (passed, failed, skipped) =
        counts.unwrap_or_else(|| panic!("no summary from the {sdk} suite:\n{text}"));
    replyd_testkit::note(&format!(
        "{sdk} SDK: {passed} passed, {failed} failed, {skipped} skipped"
    ));
    assert!(ok && failed == 0, "the {sdk} SDK's suite failed:\n{text}");
    assert_eq!(skipped, 0, "the {sdk} SDK's suite skipped cases:\n{text}");
    assert!(
        passed >= 10,
        "the {sdk} SDK's suite ran only {passed} cases:\n{text}"
    );
}

#[test]
fn the_python_sdk_passes_its_suite() {
    for (module, package) in [
        ("pytest", "pytest"),
        ("httpx", "httpx"),
        ("httpx_sse", "httpx-sse"),
    ] {
        if !replyd_testkit::python_has(module, package) {
            return;
        }
    }
    let mut cmd = Command::new(replyd_testkit::python());
    cmd.args([
        "-m",
        "pytest",
        "clients/python/tests",
        "-q",
        "-p",
        "no:cacheprovider",
    ])
    .current_dir(root())
    .env("PYTHONPATH", root().join("clients/python/src"));
    let (ok, text) = run(cmd);
    judge("Python", ok, pytest_counts(&text), &text);
}

#[test]
fn the_typescript_sdk_passes_its_suite() {
    let dir = root().join("clients/typescript");
    if Command::new("node").arg("--version").output().is_err() {
        replyd_testkit::skip("Node.js", "install Node.js 20 or later");
        return;
    }
    if !dir.join("node_modules/typescript").exists() {
        replyd_testkit::skip(
            "the TypeScript SDK's dev packages",
            "run scripts/test (npm ci --prefix clients/typescript)",
        );
        return;
    }
    let mut cmd = Command::new("npm");
    cmd.args(["test", "--silent"]).current_dir(&dir);
    let (ok, text) = run(cmd);
    judge("TypeScript", ok, node_counts(&text), &text);
}

#[test]
fn suite_summaries_are_read() {
    assert_eq!(
        pytest_counts("....\n==== 41 passed, 2 skipped in 12.31s ====\n"),
        Some((41, 0, 2))
    );
    assert_eq!(
        pytest_counts("1 failed, 40 passed, 1 error in 3.0s"),
        Some((40, 2, 0))
    );
    assert_eq!(pytest_counts("nothing"), None);
    let node =
        "ℹ tests 12\nℹ suites 0\nℹ pass 11\nℹ fail 1\nℹ cancelled 0\nℹ skipped 0\nℹ todo 0\n";
    assert_eq!(node_counts(node), Some((11, 1, 0)));
    assert_eq!(node_counts("# pass 3\n# fail 0\n"), Some((3, 0, 0)));
}
