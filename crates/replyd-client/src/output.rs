//! A job's output, a Durable Stream (`/v1/jobs/{id}/output`): the worker
//! holding the lease appends to it; anyone who may read the job reads it
//! from an offset, caught up or by long poll, and resumes from the offset
//! the last read gave.

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;

use crate::error::{error_from, expect_success};
use crate::{Client, Result};

/// The start of a stream, as an offset.
pub const START: &str = "-1";

/// What one read of a job's output gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRead {
    /// The bytes from the offset asked for (a JSON stream's messages as
    /// one array).
    pub data: Bytes,
    pub content_type: Option<String>,
    /// Where the next read starts.
    pub next_offset: String,
    /// Nothing more was there when this was read.
    pub up_to_date: bool,
    /// Nothing more will ever come: the job has ended.
    pub closed: bool,
}

impl Client {
    /// `POST /v1/jobs/{id}/output`: appends `chunk` to the job's output,
    /// with the lease the worker holds (the first append fixes the
    /// stream's content type). `producer`: `(id, epoch, seq)` for an append
    /// that may be retried without landing twice.
    pub async fn append_output(
        &self,
        id: &str,
        lease_id: &str,
        content_type: &str,
        chunk: Bytes,
        producer: Option<(&str, u64, u64)>,
    ) -> Result<()> {
        let mut req = self
            .request(Method::POST, self.job_url(id, Some("output")))
            .header(CONTENT_TYPE, content_type)
            .header("lease-id", lease_id)
            .body(chunk);
        if let Some((p, epoch, seq)) = producer {
            req = req
                .header("producer-id", p)
                .header("producer-epoch", epoch.to_string())
                .header("producer-seq", seq.to_string());
        }
        expect_success(req.send().await?).await
    }

    /// `GET /v1/jobs/{id}/output?offset=`: what the output holds from
    /// `offset` ([`START`], or a `next_offset` an earlier read gave). With
    /// `wait`, a read at the end waits (a long poll) for more or for the
    /// job's end; one that waited in vain answers no data, up to date.
    pub async fn output(&self, id: &str, offset: &str, wait: bool) -> Result<OutputRead> {
        let mut url = self.job_url(id, Some("output"));
        url.query_pairs_mut().append_pair("offset", offset);
        if wait {
            url.query_pairs_mut().append_pair("live", "long-poll");
        }
        let resp = self.request(Method::GET, url).send().await?;
        let status = resp.status().as_u16();
        if status != 200 && status != 204 {
            return Err(error_from(resp).await);
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let next_offset = header("stream-next-offset").unwrap_or_else(|| offset.to_owned());
        let content_type = header("content-type");
        let up_to_date = header("stream-up-to-date").as_deref() == Some("true");
        let closed = header("stream-closed").as_deref() == Some("true");
        let data = resp.bytes().await?;
        Ok(OutputRead {
            data,
            content_type,
            next_offset,
            up_to_date,
            closed,
        })
    }
}
