//! `replyd keys` as an operator uses it: generate, list and retire the
//! keys that sign webhook JWTs, in the store a server then publishes at
//! `/.well-known/jwks.json`. SQLite in a temporary directory; the server
//! listens on 127.0.0.1.

use std::process::Stdio;
use std::time::Duration;

mod support;
use support::{Server, db_path, http, replyd};

/// Runs `replyd keys --db DB ARGS`: (success, stdout, stderr).
async fn keys(db: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::from(replyd());
    cmd.arg("keys")
        .arg("--db")
        .arg(db)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("replyd keys exits within 20 s")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn keys_are_generated_listed_published_and_retired() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_path(dir.path());
    let (ok, out, err) = keys(&db, &["list"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "", "a new store has no key yet");

    // The first key signs at once, whatever --activate-in says: nothing
    // signs before it.
    let (ok, out, err) = keys(&db, &["generate"]).await;
    assert!(ok, "{err}");
    let first = out.split('\t').next().unwrap().to_string();
    let (ok, out, err) = keys(&db, &["generate", "--activate-in", "600"]).await;
    assert!(ok, "{err}");
    let next = out.split('\t').next().unwrap().to_string();
    assert_ne!(first, next);
    let (_, list, _) = keys(&db, &["list"]).await;
    let status = |kid: &str| {
        list.lines()
            .find(|l| l.starts_with(kid))
            .and_then(|l| l.split('\t').nth(1))
            .map(str::to_string)
    };
    assert_eq!(status(&first).as_deref(), Some("signing"), "{list}");
    assert_eq!(status(&next).as_deref(), Some("next"), "{list}");

    // A server on that store publishes both (the next one before it signs).
    let server = Server::start(dir.path(), None).await;
    let jwks: serde_json::Value = http()
        .get(format!("{}/.well-known/jwks.json", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let published: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(published, [first.as_str(), next.as_str()]);
    drop(server);

    // The key that signs now cannot be retired; an unknown one neither.
    let (ok, _, err) = keys(&db, &["retire", &first]).await;
    assert!(!ok && err.contains("signs now"), "{err}");
    let (ok, _, err) = keys(&db, &["retire", "nope"]).await;
    assert!(!ok && err.contains("no key"), "{err}");
    let (ok, _, err) = keys(&db, &["retire", &next]).await;
    assert!(ok, "{err}");
    let (_, list, _) = keys(&db, &["list"]).await;
    assert_eq!(list.lines().count(), 1, "{list}");
}
