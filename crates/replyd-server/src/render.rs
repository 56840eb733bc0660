//! The job's wire representation (API.md "Job representation"), the one
//! every channel sends: HTTP answers, SSE and WebSocket events, webhook
//! payloads, broker replies. Its links carry the job's token.

use bytes::Bytes;
use replyd_core::event::EventRecord;
use replyd_core::job::JobRecord;
use replyd_proto as proto;

use crate::auth::JobTokens;

/// Renders jobs and events for the wire.
#[derive(Debug, Clone)]
pub struct Renderer {
    tokens: JobTokens,
}

impl Renderer {
    pub fn new(tokens: JobTokens) -> Renderer {
        Renderer { tokens }
    }

    /// The wire representation of a job. Its links carry the job token.
    pub fn job(&self, job: &JobRecord) -> proto::Job {
        let token = self.tokens.mint(job.id);
        let base = format!("/v1/jobs/{}", job.id);
        proto::Job {
            id: job.id.to_string(),
            queue: job.queue.clone(),
            state: wire_state(job.state),
            progress: job.progress.as_ref().map(|p| proto::Progress {
                percent: p.percent,
                message: p.message.clone(),
            }),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            priority: job.priority,
            run_at: (job.state == replyd_core::JobState::Scheduled).then_some(job.run_at),
            group: job.group.clone(),
            cancel_requested: job.cancel_requested,
            created_at: job.created_at,
            updated_at: job.updated_at,
            finished_at: job.finished_at,
            expires_at: job.expires_at,
            error: job.error.as_ref().map(|e| proto::JobError {
                code: e.code.clone(),
                message: e.message.clone(),
                status: e.status,
            }),
            links: proto::Links {
                self_: format!("{base}?access_token={token}"),
                result: format!("{base}/result?access_token={token}"),
                events: format!("{base}/events?access_token={token}"),
                output: format!("{base}/output?access_token={token}"),
            },
            output: job.output.map(|o| proto::Output {
                bytes: o.to,
                offset: replyd_core::stream::encode_offset(o.from),
                next_offset: replyd_core::stream::encode_offset(o.to),
                text: None,
            }),
            input: None,
        }
    }

    /// An event's `data`: the job as it was after the event, as JSON.
    pub fn event(&self, e: &EventRecord) -> Bytes {
        serde_json::to_vec(&self.job(&e.job))
            .unwrap_or_default()
            .into()
    }
}

pub fn wire_state(s: replyd_core::JobState) -> proto::JobState {
    use replyd_core::JobState as S;
    match s {
        S::Scheduled => proto::JobState::Scheduled,
        S::Queued => proto::JobState::Queued,
        S::Running => proto::JobState::Running,
        S::Succeeded => proto::JobState::Succeeded,
        S::Failed => proto::JobState::Failed,
        S::Canceled => proto::JobState::Canceled,
    }
}

pub fn domain_state(s: proto::JobState) -> replyd_core::JobState {
    use replyd_core::JobState as S;
    match s {
        proto::JobState::Scheduled => S::Scheduled,
        proto::JobState::Queued => S::Queued,
        proto::JobState::Running => S::Running,
        proto::JobState::Succeeded => S::Succeeded,
        proto::JobState::Failed => S::Failed,
        proto::JobState::Canceled => S::Canceled,
    }
}
