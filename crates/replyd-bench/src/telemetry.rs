//! `telemetry`: what exporting spans costs (`[telemetry] otlp_endpoint`,
//! feature `otel`). The e2e run with telemetry off, then on with every
//! job in a sampled trace and its spans sent to an OTLP sink in this
//! process that counts them, alternating for `--rounds` rounds; the
//! median jobs/s of each, their ratio, and how many spans per job reached
//! the sink (4 each: submit, queue wait, attempt, job).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

use crate::BenchArgs;
use crate::e2e::e2e_run;
use crate::harness::*;

pub(crate) async fn run(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "\ntelemetry: e2e ({} jobs, {} clients, {} workers) with spans off and exported (OTLP/HTTP JSON to an in-process sink), {} alternating rounds",
        args.jobs,
        args.clients,
        args.workers,
        args.rounds.max(1)
    );
    let spans = Arc::new(AtomicUsize::new(0));
    let counted = spans.clone();
    let sink = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let counted = counted.clone();
            async move {
                // Each span is an object with a "spanId".
                let n = body.windows(8).filter(|w| w == b"\"spanId\"").count();
                counted.fetch_add(n, Ordering::Relaxed);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_url = format!("http://{}", listener.local_addr()?);
    let sink_task = tokio::spawn(async move {
        let _ = axum::serve(listener, sink).await;
    });
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut per_job = Vec::new();
    for round in 0..args.rounds.max(1) {
        for traced in [false, true] {
            let db = dir.join(format!("bench-telemetry-{round}-{traced}.db"));
            let url = sink_url.clone();
            let server = start_replyd_with(&Storage::Sqlite(db), move |c| {
                if traced {
                    c.telemetry.otlp_endpoint = Some(url);
                }
            })
            .await?;
            let before = spans.load(Ordering::Relaxed);
            let run = e2e_run(args, &[server.addr]).await?;
            // Let the exporter catch up before the server stops.
            if traced {
                let want = before + 4 * run.done;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while spans.load(Ordering::Relaxed) < want && std::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                per_job.push((spans.load(Ordering::Relaxed) - before) as f64 / run.done as f64);
            }
            server.stop().await;
            println!(
                "  round {}: spans {}: {:.0} jobs/s",
                round + 1,
                if traced { "exported" } else { "off" },
                run.rate()
            );
            if traced { &mut on } else { &mut off }.push(run.rate());
        }
    }
    sink_task.abort();
    let (off, on) = (median(&mut off), median(&mut on));
    println!(
        "  median: off {off:.0} jobs/s, exported {on:.0} jobs/s: ratio {:.2}; spans per job at the sink {:?}",
        on / off,
        per_job
            .iter()
            .map(|p| format!("{p:.2}"))
            .collect::<Vec<_>>()
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
