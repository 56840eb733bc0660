//! A worker in Rust: lease jobs of a queue, report progress, complete them.
//!
//! ```sh
//! # replyd with a pull queue named `report`:
//! printf '[queues.report]\n' > /tmp/replyd.toml
//! cargo run --release -- serve --config /tmp/replyd.toml &
//! cargo run -p replyd-client --example worker &
//! curl -X POST localhost:8202/v1/jobs -H 'content-type: application/json' \
//!      -d '{"queue": "report", "input": {"pages": 5}}'
//! ```
//!
//! Ctrl-C drains it: no new jobs, the running one may finish.

use std::time::Duration;

use replyd_client::Client;
use replyd_client::worker::{Outcome, Stop, Task, Worker, WorkerOptions};

#[tokio::main]
async fn main() -> replyd_client::Result<()> {
    let url = std::env::var("REPLYD_URL").unwrap_or_else(|_| "http://127.0.0.1:8202".into());
    let client = Client::new(&url, std::env::var("REPLYD_API_KEY").ok())?;
    let mut options = WorkerOptions::new("report");
    options.concurrency = 4;
    let worker = Worker::new(client, options);
    let control = worker.control();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        control.drain();
    });
    worker.run(render).await
}

/// One "page" every half second, then the report.
async fn render(task: Task) -> Outcome {
    let pages = task.input["pages"].as_u64().unwrap_or(3);
    for page in 1..=pages {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            why = task.stopped() => {
                return match why {
                    Stop::LeaseLost => Outcome::Drop,
                    why => Outcome::Fail { message: format!("stopped: {why:?}"), retry: why == Stop::Shutdown },
                };
            }
        }
        let percent = (page * 100 / pages) as f64;
        task.progress(Some(percent), Some(&format!("page {page} of {pages}")));
    }
    Outcome::Json(
        serde_json::json!({"pages": pages, "url": format!("/reports/{}.pdf", task.job.id)}),
    )
}
