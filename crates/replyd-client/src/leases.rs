//! The worker side (API.md §5): lease, heartbeat, progress, complete, fail.
//! [`worker`](crate::worker) is the loop built on these.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder};
use serde::Serialize;
use serde_json::Value;

use replyd_proto::{
    CompleteRequest, FailReason, FailRequest, HeartbeatRequest, LEASE_ID_HEADER, Lease, LeaseBatch,
    LeaseRequest, LeaseStatus, ProgressRequest,
};

use crate::HOLD_GRACE;
use crate::error::{error_from, expect_success};
use crate::jobs::json_body;
use crate::{Client, Result};

impl Client {
    /// `POST /v1/queues/{queue}/lease`: leases one job, or `None` when none
    /// came within `req.wait` seconds (204). `req.batch` is ignored; see
    /// [`Client::lease_batch`].
    pub async fn lease(&self, queue: &str, req: &LeaseRequest) -> Result<Option<Lease>> {
        let req = LeaseRequest {
            batch: None,
            ..req.clone()
        };
        let resp = self.lease_request(queue, &req).send().await?;
        match resp.status().as_u16() {
            200 => json_body(resp).await.map(Some),
            204 => Ok(None),
            _ => Err(error_from(resp).await),
        }
    }

    /// `POST /v1/queues/{queue}/lease` with a `batch` size (1 when
    /// `req.batch` is unset): up to that many jobs, possibly none.
    pub async fn lease_batch(&self, queue: &str, req: &LeaseRequest) -> Result<Vec<Lease>> {
        let req = LeaseRequest {
            batch: Some(req.batch.unwrap_or(1)),
            ..req.clone()
        };
        let resp = self.lease_request(queue, &req).send().await?;
        match resp.status().as_u16() {
            200 => Ok(json_body::<LeaseBatch>(resp).await?.leases),
            204 => Ok(Vec::new()),
            _ => Err(error_from(resp).await),
        }
    }

    pub(crate) fn lease_request(&self, queue: &str, req: &LeaseRequest) -> RequestBuilder {
        let hold = req
            .wait
            .filter(|w| w.is_finite() && *w > 0.0)
            .map_or(Duration::ZERO, |w| Duration::from_secs_f64(w.min(3600.0)));
        self.request(Method::POST, self.url(&["v1", "queues", queue, "lease"]))
            .json(req)
            .timeout(hold + HOLD_GRACE)
    }

    /// `POST /v1/jobs/{id}/heartbeat`: renews the lease (by `lease_secs`, or
    /// the lease's own length) and tells whether a cancel was requested. A
    /// lost lease is `409`.
    pub async fn heartbeat(
        &self,
        id: &str,
        lease_id: &str,
        lease_secs: Option<f64>,
    ) -> Result<LeaseStatus> {
        let body = HeartbeatRequest {
            lease_id: lease_id.to_owned(),
            lease: lease_secs,
        };
        self.lease_call(id, "heartbeat", &body).await
    }

    /// `POST /v1/jobs/{id}/progress`: reports how far the job has come.
    pub async fn progress(
        &self,
        id: &str,
        lease_id: &str,
        percent: Option<f64>,
        message: Option<&str>,
    ) -> Result<LeaseStatus> {
        let body = ProgressRequest {
            lease_id: lease_id.to_owned(),
            percent,
            message: message.map(str::to_owned),
        };
        self.lease_call(id, "progress", &body).await
    }

    pub(crate) async fn lease_call<B: Serialize>(
        &self,
        id: &str,
        action: &str,
        body: &B,
    ) -> Result<LeaseStatus> {
        let resp = self
            .request(Method::POST, self.job_url(id, Some(action)))
            .json(body)
            .send()
            .await?;
        match resp.status().as_u16() {
            200 => json_body(resp).await,
            _ => Err(error_from(resp).await),
        }
    }

    /// `POST /v1/jobs/{id}/complete` with a JSON result.
    pub async fn complete_json(&self, id: &str, lease_id: &str, result: Value) -> Result<()> {
        let body = CompleteRequest {
            lease_id: lease_id.to_owned(),
            result,
        };
        let resp = self
            .request(Method::POST, self.job_url(id, Some("complete")))
            .json(&body)
            .send()
            .await?;
        expect_success(resp).await
    }

    /// `POST /v1/jobs/{id}/complete` with a raw result: the body is stored
    /// as is and served with `content_type`.
    pub async fn complete_raw(
        &self,
        id: &str,
        lease_id: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<()> {
        let resp = self
            .request(Method::POST, self.job_url(id, Some("complete")))
            .header(CONTENT_TYPE, content_type)
            .header(LEASE_ID_HEADER, lease_id)
            .body(body)
            .send()
            .await?;
        expect_success(resp).await
    }

    /// `POST /v1/jobs/{id}/fail`: the attempt failed. With `retry`, the job
    /// is tried again (with backoff) if it has attempts left.
    pub async fn fail(&self, id: &str, lease_id: &str, message: &str, retry: bool) -> Result<()> {
        let body = FailRequest {
            lease_id: lease_id.to_owned(),
            error: FailReason::Message(message.to_owned()),
            retry,
        };
        let resp = self
            .request(Method::POST, self.job_url(id, Some("fail")))
            .json(&body)
            .send()
            .await?;
        expect_success(resp).await
    }
}
