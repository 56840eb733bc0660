//! The built-in `demo` executor: sleeps `input.seconds` (default 3, at most
//! 600), reporting progress each second, then succeeds with
//! `{"slept": seconds, "input": ...}`. `{"fail": true}` fails it instead.
//! It lets a newcomer watch every channel with nothing else installed.

use std::sync::Arc;
use std::time::Duration;

use replyd_core::job::{Command, JobError, Progress};
use replyd_core::store::{JobOutput, Leased, Move};
use serde_json::{Value, json};

use crate::app::App;

const LEASE: Duration = Duration::from_secs(15);

/// Runs the demo queue `queue` until shutdown, `concurrency` jobs at once.
pub async fn run(app: Arc<App>, queue: String, concurrency: u32) {
    let leasing = super::Leasing {
        queue,
        worker: "demo".into(),
        length: LEASE,
        concurrency: concurrency as usize,
    };
    super::work(
        app,
        leasing,
        |app, job| async move { run_one(&app, job).await },
    )
    .await
}

async fn run_one(app: &App, leased: Leased) {
    let id = leased.job.id;
    let lease_id = leased.lease_id;
    let input: Value = serde_json::from_slice(&leased.input).unwrap_or(Value::Null);
    let seconds = input
        .get("seconds")
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite())
        .unwrap_or(3.0)
        .clamp(0.0, 600.0);
    let steps = seconds.ceil().max(1.0) as u32;
    let step = Duration::from_secs_f64(seconds / f64::from(steps));
    for i in 1..=steps {
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            // On shutdown the job keeps its lease; after a restart it is
            // retried once the lease expires.
            _ = app.shutdown.cancelled() => return,
        }
        if i == steps {
            break;
        }
        let cmd = Command::Progress {
            lease_id: lease_id.clone(),
            progress: Progress {
                percent: Some(f64::from(i * 100 / steps)),
                message: Some(format!("step {i} of {steps}")),
            },
        };
        match app.store.apply(id, None, cmd, None, app.now()).await {
            Ok(job) if job.cancel_requested => {
                let cmd = Command::Fail {
                    lease_id,
                    error: JobError::new("canceled", "canceled by request"),
                    retry: false,
                };
                let _ = app.store.apply(id, None, cmd, None, app.now()).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::info!(job = %id, error = %e, "demo job lost its lease");
                return;
            }
        }
    }
    let fail = input.get("fail").and_then(Value::as_bool).unwrap_or(false);
    let (cmd, output) = if fail {
        let cmd = Command::Fail {
            lease_id,
            error: JobError::new("demo_failure", "the demo job was asked to fail"),
            retry: false,
        };
        (cmd, None)
    } else {
        let body = json!({"slept": seconds, "input": input});
        let output = JobOutput {
            content_type: "application/json".into(),
            body: serde_json::to_vec(&body).unwrap_or_default().into(),
            upstream: None,
        };
        (Command::Complete { lease_id }, Some(output))
    };
    if let Err(e) = app.finisher.apply(Move { id, cmd, output }).await {
        tracing::info!(job = %id, error = %e, "demo job could not finish");
    }
}
