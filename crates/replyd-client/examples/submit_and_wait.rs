//! Submit a job and follow it to its result.
//!
//! ```sh
//! cargo run --release -- serve &                      # replyd with its demo queue
//! cargo run -p replyd-client --example submit_and_wait
//! ```
//!
//! `REPLYD_URL` (default `http://127.0.0.1:8202`) and `REPLYD_API_KEY` say
//! where and as whom.

use std::time::Duration;

use replyd_client::proto::{JobState, SubmitRequest};
use replyd_client::{Client, WaitOptions};

#[tokio::main]
async fn main() -> replyd_client::Result<()> {
    let url = std::env::var("REPLYD_URL").unwrap_or_else(|_| "http://127.0.0.1:8202".into());
    let client = Client::new(&url, std::env::var("REPLYD_API_KEY").ok())?;
    let job = client
        .submit(
            &SubmitRequest {
                queue: "demo".into(),
                input: serde_json::json!({"seconds": 3}),
                webhook: None,
                max_attempts: None,
                timeout: None,
                ttl: None,
                output: None,
                priority: None,
                delay: None,
                run_at: None,
                group: None,
            },
            None,
        )
        .await?;
    println!("accepted {} ({})", job.id, job.state);
    // Over Server-Sent Events, falling back to long polling; a callback per
    // event shows the progress.
    let options = WaitOptions {
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let waited = client
        .wait_with_options(&job.id, &options, |j| {
            if let (JobState::Running, Some(p)) = (j.state, &j.progress) {
                println!(
                    "{} {:?}% {}",
                    j.state,
                    p.percent,
                    p.message.as_deref().unwrap_or("")
                );
            }
        })
        .await?;
    println!("{} over {:?}", waited.job.state, waited.transport);
    if waited.job.state == JobState::Succeeded {
        let result = client.result(&job.id).await?;
        println!(
            "{}: {}",
            result.content_type,
            String::from_utf8_lossy(&result.body)
        );
    }
    Ok(())
}
