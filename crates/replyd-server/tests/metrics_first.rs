//! What is counted before anyone has scraped `/metrics` shows in the first
//! scrape. Its own test binary: the recorder is process-wide, so only a
//! fresh process shows whether a server installs it when it starts (it
//! was once installed at the first scrape, and everything before was
//! lost, such as a broker consumer's `replyd_broker_consuming`).

mod common;

use common::{PULL_QUEUES, TestServer};
use serde_json::json;

const BACKEND: common::Backend = common::Backend::Sqlite;

#[tokio::test]
async fn the_first_scrape_shows_what_came_before_it() {
    let Some(server) = TestServer::start(PULL_QUEUES).await else {
        return;
    };
    let c = server.client(None);
    c.submit("work", json!({"n": 1})).await;
    let m = c.get("/metrics").await;
    let text = String::from_utf8_lossy(&m.body);
    let submits = text
        .lines()
        .find(|l| {
            l.starts_with("replyd_http_request_duration_seconds_count")
                && l.contains(r#"route="/v1/jobs""#)
                && l.contains(r#"method="POST""#)
        })
        .unwrap_or_else(|| panic!("no submit latency in the first scrape:\n{text}"));
    let n: f64 = submits.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{submits}");
    server.stop.cancel();
    let _ = server.task.await;
}
