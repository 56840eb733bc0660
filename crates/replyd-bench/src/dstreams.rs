//! `dstreams`: Durable Streams appends, replyd beside the protocol's Node
//! reference server (`@durable-streams/server`, in memory and file-backed:
//! `../shared/peers/durable-streams`, made ready in
//! `target/peers/durable-streams` by `scripts/peers-setup`), in one
//! invocation and in one shape: each server alone on cpu 0, the peer's own
//! load generator (`appendbench.mjs`: N writers, one stream each, ~30-byte
//! `text/plain` appends, each waiting for its answer) on cpu 1, N = 64 and
//! 256. Printed: appends/s, p50 and p99 of an append, errors, and replyd's
//! ratio to the in-memory reference (which keeps nothing across a
//! restart; replyd and the file-backed one answer an append once it is on
//! disk). With `--database-url`, replyd on PostgreSQL too.
//!
//! Node's load generator takes a whole core at about 6,000 appends/s on
//! this machine, so each server is also measured with this binary's own
//! keep-alive client (the same shape: N connections, one stream each, one
//! append in flight per connection), which costs a fraction of that.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::BenchArgs;
use crate::process::Process;

/// What `appendbench.mjs` printed.
#[derive(Debug, Clone, Default, PartialEq)]
struct Load {
    appends_per_s: f64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Load {
    fn parse(line: &str) -> Option<Load> {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        let num = |k: &str| match &v[k] {
            serde_json::Value::String(s) => s.parse().ok(),
            n => n.as_f64(),
        };
        Some(Load {
            appends_per_s: num("appends_per_s")?,
            errors: num("errors")? as u64,
            p50_ms: num("p50_ms").unwrap_or(f64::NAN),
            p99_ms: num("p99_ms").unwrap_or(f64::NAN),
        })
    }
}

const WRITERS: [usize; 2] = [64, 256];

/// The same shape from this process: `n` keep-alive connections, each
/// making its stream, then appending ~30 bytes at a time for `secs`.
async fn rust_load(base: &str, n: usize, secs: u64) -> anyhow::Result<Load> {
    use crate::harness::Conn;
    use hyper::{Method, StatusCode};
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse()?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut conn = Conn::open(addr).await?;
        let path = format!("/v1/stream/rbench-{run}-{i}");
        let (status, _) = conn
            .send(Method::PUT, &path, "text/plain", bytes::Bytes::new())
            .await?;
        if status != StatusCode::CREATED {
            bail!("creating {path}: {status}");
        }
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut k = 0u64;
            while tokio::time::Instant::now() < deadline {
                let body = bytes::Bytes::from(format!("token-{k:024}"));
                k += 1;
                let t = std::time::Instant::now();
                match conn.send(Method::POST, &path, "text/plain", body).await {
                    Ok((s, _)) if s.is_success() => lat.push(t.elapsed()),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p) as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Ok(Load {
        appends_per_s: lat.len() as f64 / secs as f64,
        errors,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    })
}

/// Both load generators against `url`, each N of [`WRITERS`]: rows of
/// `name`.
async fn measure(
    rows: &mut Vec<(String, usize, Load)>,
    name: &str,
    peer: &Path,
    url: &str,
    secs: u64,
) -> anyhow::Result<()> {
    for n in WRITERS {
        rows.push((format!("{name} [node]"), n, load(peer, url, n, secs).await?));
    }
    for n in WRITERS {
        rows.push((format!("{name} [rust]"), n, rust_load(url, n, secs).await?));
    }
    Ok(())
}

/// The load generator against `url` with `n` writers for `secs`.
async fn load(peer: &Path, url: &str, n: usize, secs: u64) -> anyhow::Result<Load> {
    let out = tokio::process::Command::new("taskset")
        .args(["-c", "1", "node", "appendbench.mjs"])
        .current_dir(peer)
        .env("DS_URL", url)
        .env("N", n.to_string())
        .env("SECS", secs.to_string())
        .output()
        .await
        .context("cannot run node appendbench.mjs")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().rev().find_map(Load::parse).with_context(|| {
        format!(
            "appendbench.mjs printed no figures: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The reference server on cpu 0 (`data_dir`: file-backed), until dropped.
pub(crate) async fn reference(
    peer: &Path,
    data_dir: Option<&Path>,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = tokio::process::Command::new("taskset");
    cmd.args(["-c", "0", "node", "ref.mjs"])
        .current_dir(peer)
        .env("PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(d) = data_dir {
        cmd.env("DATA_DIR", d);
    }
    let mut child = cmd.spawn().context("cannot start node ref.mjs")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("ready") {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    })
    .await;
    if !matches!(ready, Ok(Ok(true))) {
        bail!("the reference server did not start");
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, format!("http://127.0.0.1:{port}")))
}

pub(crate) async fn replyd(dir: &Path, store: &[&str]) -> anyhow::Result<Process> {
    let config = dir.join("dstreams.toml");
    std::fs::write(
        &config,
        "[limits]\nappend_rate = 0\nmax_connections_per_ip = 0\n\
         streams = { total = 0, per_ip = 0, per_tenant = 0 }\n\
         waits = { total = 0, per_ip = 0, per_tenant = 0 }\n",
    )?;
    let config = config.display().to_string();
    let mut args = vec!["serve", "--config", &config, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(store);
    Process::spawn_pinned("0", &args, "replyd listening on ").await
}

pub async fn run(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let peer = std::path::absolute("target/peers/durable-streams")?;
    println!(
        "\n== dstreams: appends to Durable Streams, N writers (one stream each), ~30-byte appends"
    );
    if !peer.join("node_modules/@durable-streams/server").exists() {
        println!(
            "  skipped: no reference server in {} (run scripts/peers-setup)",
            peer.display()
        );
        return Ok(());
    }
    let secs = args.duration.round().max(3.0) as u64;
    let mut rows: Vec<(String, usize, Load)> = Vec::new();

    let db = dir.join("dstreams.db").display().to_string();
    let server = replyd(dir, &["--db", &db]).await?;
    let url = format!("http://{}", server.addr);
    measure(
        &mut rows,
        "replyd, SQLite (synchronous=FULL)",
        &peer,
        &url,
        secs,
    )
    .await?;
    drop(server);

    #[cfg(feature = "postgres")]
    if let Some(base) = &args.database_url {
        let db = replyd_store::postgres::testing::fresh_schema_at(base, "bench")
            .await
            .context("PostgreSQL")?;
        let server = replyd(dir, &["--database-url", &db]).await?;
        let url = format!("http://{}", server.addr);
        measure(&mut rows, "replyd, PostgreSQL", &peer, &url, secs).await?;
    }

    let (child, url) = reference(&peer, None).await?;
    measure(&mut rows, "reference, in memory", &peer, &url, secs).await?;
    drop(child);
    let data = tempfile::tempdir_in(dir)?;
    let (child, url) = reference(&peer, Some(data.path())).await?;
    measure(
        &mut rows,
        "reference, file-backed (fdatasync)",
        &peer,
        &url,
        secs,
    )
    .await?;
    drop(child);

    println!(
        "  {:<43} {:>4} {:>11} {:>8} {:>8} {:>7} {:>9}",
        "server", "N", "appends/s", "p50 ms", "p99 ms", "errors", "÷ memory"
    );
    for (name, n, l) in &rows {
        let client = if name.ends_with("[node]") {
            "[node]"
        } else {
            "[rust]"
        };
        let memory = rows
            .iter()
            .find(|(m, k, _)| *m == format!("reference, in memory {client}") && k == n)
            .map(|(_, _, l)| l.appends_per_s);
        let ratio = memory.map_or(String::from("-"), |m| format!("{:.2}", l.appends_per_s / m));
        println!(
            "  {name:<43} {n:>4} {:>11.0} {:>8.2} {:>8.2} {:>7} {:>9}",
            l.appends_per_s, l.p50_ms, l.p99_ms, l.errors, ratio
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_generators_line_is_read() {
        let l = Load::parse(
            r#"{"N":64,"appends_per_s":12485,"errors":0,"codes":{},"p50_ms":"4.80","p99_ms":"19.02"}"#,
        )
        .unwrap();
        assert_eq!(l.appends_per_s, 12485.0);
        assert_eq!(l.p99_ms, 19.02);
        assert_eq!(Load::parse("ready"), None);
    }
}
