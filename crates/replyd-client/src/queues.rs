//! Queues: their jobs by state and last hour (`GET /v1/queues`), and
//! pausing and resuming one. Operator calls: a key of every tenant.

use reqwest::Method;

use replyd_proto::{Queue, QueueList};

use crate::error::error_from;
use crate::jobs::json_body;
use crate::{Client, Result};

impl Client {
    /// `GET /v1/queues`: every configured queue.
    pub async fn queues(&self) -> Result<QueueList> {
        let resp = self
            .request(Method::GET, self.url(&["v1", "queues"]))
            .send()
            .await?;
        match resp.status().as_u16() {
            200 => json_body(resp).await,
            _ => Err(error_from(resp).await),
        }
    }

    /// `POST /v1/queues/{name}/pause` (`paused`) or `/resume`: no job of a
    /// paused queue is leased until it is resumed. The queue as it now is.
    pub async fn pause_queue(&self, name: &str, paused: bool) -> Result<Queue> {
        let action = if paused { "pause" } else { "resume" };
        let resp = self
            .request(Method::POST, self.url(&["v1", "queues", name, action]))
            .send()
            .await?;
        match resp.status().as_u16() {
            200 => json_body(resp).await,
            _ => Err(error_from(resp).await),
        }
    }
}
