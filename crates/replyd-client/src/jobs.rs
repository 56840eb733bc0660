//! The client side of jobs (API.md §1): submit, get, result, cancel,
//! delete, list.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{
    CONTENT_LOCATION, CONTENT_TYPE, ETAG, HeaderMap, IF_NONE_MATCH, RETRY_AFTER,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use replyd_proto::{Job, JobList, JobState, SubmitRequest};

use crate::HOLD_GRACE;
use crate::error::{error_from, expect_success, parse_retry_after};
use crate::{Client, Error, Result};

/// A job as `GET /v1/jobs/{id}` answered it, with what the answer's headers add.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    pub job: Job,
    /// `Retry-After`: when the server suggests polling again (pending jobs).
    pub retry_after: Option<Duration>,
    /// `ETag`, verbatim (quotes included), for `If-None-Match` long polling.
    pub etag: Option<String>,
}

/// A job's result: the body exactly as the worker gave it, with its type.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    pub content_type: String,
    pub body: Bytes,
}

impl JobResult {
    /// Whether the content type is JSON (`application/json` or `+json`).
    pub fn is_json(&self) -> bool {
        let essence = self.content_type.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
            || essence.to_ascii_lowercase().ends_with("+json")
    }

    /// Decodes the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }
}

/// The answer to [`Client::submit_and_wait`].
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// The job succeeded within the wait: here is its result.
    Done { job_id: String, result: JobResult },
    /// The job is still pending (or failed): the usual 202 representation.
    Accepted(Box<Job>),
}

impl Client {
    /// `POST /v1/jobs`: submits a job and answers its representation (202).
    /// With an `idempotency_key`, a repeat of the same request answers the
    /// same job.
    pub async fn submit(&self, req: &SubmitRequest, idempotency_key: Option<&str>) -> Result<Job> {
        let resp = self.submit_request(req, idempotency_key).send().await?;
        match resp.status().as_u16() {
            200..=202 => json_body(resp).await,
            _ => Err(error_from(resp).await),
        }
    }

    /// `POST /v1/jobs` with `Prefer: wait=N`: if the job succeeds within
    /// `wait_secs` the answer is its result; otherwise the 202 representation.
    pub async fn submit_and_wait(
        &self,
        req: &SubmitRequest,
        idempotency_key: Option<&str>,
        wait_secs: u32,
    ) -> Result<Submitted> {
        let hold = Duration::from_secs(wait_secs.into());
        let resp = self
            .submit_request(req, idempotency_key)
            .header("prefer", format!("wait={wait_secs}"))
            .timeout(hold + HOLD_GRACE)
            .send()
            .await?;
        let location = header_str(resp.headers(), &CONTENT_LOCATION);
        match resp.status().as_u16() {
            202 => Ok(Submitted::Accepted(Box::new(json_body(resp).await?))),
            // The result itself (200, or an upstream's own 2xx), named by
            // Content-Location.
            status @ 200..=299 => {
                let Some(job_id) = location.as_deref().and_then(job_id_from_location) else {
                    return Err(Error::Unexpected {
                        status,
                        body: "a result answer to submit without a Content-Location naming the job"
                            .into(),
                    });
                };
                let result = job_result(resp).await?;
                Ok(Submitted::Done { job_id, result })
            }
            _ => Err(error_from(resp).await),
        }
    }

    pub(crate) fn submit_request(
        &self,
        req: &SubmitRequest,
        idempotency_key: Option<&str>,
    ) -> RequestBuilder {
        let rb = self
            .request(Method::POST, self.url(&["v1", "jobs"]))
            .json(req);
        match idempotency_key {
            Some(key) => rb.header("idempotency-key", key),
            None => rb,
        }
    }

    /// `GET /v1/jobs/{id}`: the job, whatever its state (202 pending, 303
    /// succeeded, 200 failed or canceled).
    pub async fn get(&self, id: &str) -> Result<JobStatus> {
        let resp = self
            .request(Method::GET, self.job_url(id, None))
            .send()
            .await?;
        job_status(resp).await
    }

    /// `GET /v1/jobs/{id}` with `If-None-Match: etag`: `None` when the job
    /// is unchanged (304). With `hold`, also `Prefer: wait=N` (1 to 60 s):
    /// the server holds the request until the job changes or N seconds pass.
    pub async fn get_if_changed(
        &self,
        id: &str,
        etag: &str,
        hold: Option<Duration>,
    ) -> Result<Option<JobStatus>> {
        let mut rb = self
            .request(Method::GET, self.job_url(id, None))
            .header(IF_NONE_MATCH, etag);
        if let Some(hold) = hold {
            let secs = hold.as_secs().clamp(1, 60);
            rb = rb
                .header("prefer", format!("wait={secs}"))
                .timeout(Duration::from_secs(secs) + HOLD_GRACE);
        }
        let resp = rb.send().await?;
        if resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        job_status(resp).await.map(Some)
    }

    /// `GET /v1/jobs/{id}/result`: the result of a succeeded job. A job that
    /// is not finished, failed or was canceled is `409`; an expired one `410`.
    pub async fn result(&self, id: &str) -> Result<JobResult> {
        let resp = self
            .request(Method::GET, self.job_url(id, Some("result")))
            .send()
            .await?;
        match resp.status().as_u16() {
            // An upstream's answer (the gateway, an http queue) is replayed
            // with its own 2xx status.
            200..=299 => job_result(resp).await,
            _ => Err(error_from(resp).await),
        }
    }

    /// `POST /v1/jobs/{id}/cancel`: cancels a queued job at once, or asks a
    /// running job's worker to stop (the job is then still running). A
    /// finished job is `409`.
    pub async fn cancel(&self, id: &str) -> Result<Job> {
        let resp = self
            .request(Method::POST, self.job_url(id, Some("cancel")))
            .send()
            .await?;
        match resp.status().as_u16() {
            200 | 202 => json_body(resp).await,
            _ => Err(error_from(resp).await),
        }
    }

    /// `DELETE /v1/jobs/{id}`: removes a finished job and its result.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let resp = self
            .request(Method::DELETE, self.job_url(id, None))
            .send()
            .await?;
        expect_success(resp).await
    }

    /// `GET /v1/jobs`: one page of the caller's jobs, optionally of one queue
    /// and one state. Pass the answer's `next_cursor` to get the next page.
    pub async fn list(
        &self,
        queue: Option<&str>,
        state: Option<JobState>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<JobList> {
        let mut url = self.url(&["v1", "jobs"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(queue) = queue {
                query.append_pair("queue", queue);
            }
            if let Some(state) = state {
                query.append_pair("state", state.as_str());
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(cursor) = cursor {
                query.append_pair("cursor", cursor);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let resp = self.request(Method::GET, url).send().await?;
        match resp.status().as_u16() {
            200 => json_body(resp).await,
            _ => Err(error_from(resp).await),
        }
    }
}

/// Reads a `GET /v1/jobs/{id}` answer.
pub(crate) async fn job_status(resp: Response) -> Result<JobStatus> {
    match resp.status().as_u16() {
        200 | 202 | 303 => {
            let headers = resp.headers();
            let retry_after = header_str(headers, &RETRY_AFTER)
                .and_then(|v| parse_retry_after(&v, SystemTime::now()));
            let etag = header_str(headers, &ETAG);
            let job = json_body(resp).await?;
            Ok(JobStatus {
                job,
                retry_after,
                etag,
            })
        }
        _ => Err(error_from(resp).await),
    }
}

/// Reads a result body with its content type.
pub(crate) async fn job_result(resp: Response) -> Result<JobResult> {
    let content_type = header_str(resp.headers(), &CONTENT_TYPE)
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let body = resp.bytes().await?;
    Ok(JobResult { content_type, body })
}

/// Decodes a success answer's JSON body.
pub(crate) async fn json_body<T: DeserializeOwned>(resp: Response) -> Result<T> {
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    serde_json::from_slice(&body).map_err(|source| Error::Decode { status, source })
}

/// The job id in a `Content-Location` / `Location` such as
/// `/v1/jobs/ID/result?access_token=...` (absolute URLs too).
pub(crate) fn job_id_from_location(location: &str) -> Option<String> {
    let path = location.split(['?', '#']).next()?;
    let (_, rest) = path.split_once("/v1/jobs/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then(|| id.to_owned())
}

pub(crate) fn header_str(
    headers: &HeaderMap,
    name: &reqwest::header::HeaderName,
) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
