//! replyd's wire types: the JSON bodies of API.md, shared by the server (which
//! serializes them and derives `/openapi.json` from them) and the Rust client.
//!
//! Only this crate and the HTTP edge know the wire format: the core works on
//! its own domain types and converts at the boundary.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

mod steer;
pub use steer::*;

/// Where a job is in its life. `queued → running → succeeded | failed | canceled`,
/// and `running → queued` again when an attempt is retried; a job
/// submitted with `delay` or `run_at` is `scheduled` until then, then `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Scheduled,
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Succeeded, failed and canceled are final: nothing moves a job out of them.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Canceled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a running job has come, as its worker last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// 0 to 100.
    #[schema(minimum = 0, maximum = 100)]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "percent::serialize"
    )]
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

mod percent {
    use serde::Serializer;

    /// `40` rather than `40.0` when the percentage is whole.
    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(p) if p.fract() == 0.0 && p.abs() < 1e15 => s.serialize_i64(*p as i64),
            Some(p) => s.serialize_f64(*p),
            None => s.serialize_none(),
        }
    }
}

/// Why a job failed or was canceled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobError {
    /// A short machine-readable code, e.g. `worker_error`, `canceled`, `lease_expired`.
    pub code: String,
    pub message: String,
    /// The HTTP status an upstream service answered (the gateway and the
    /// `http` executor), when that is why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// Links of a job. They carry the job token as `access_token`, so that a
/// backend can hand them to a browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub self_: String,
    pub result: String,
    pub events: String,
    /// The job's output, a Durable Stream (older servers send none).
    #[serde(default)]
    pub output: String,
}

/// The job representation (API.md "Job representation").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: String,
    pub queue: String,
    pub state: JobState,
    pub progress: Option<Progress>,
    pub attempt: u32,
    pub max_attempts: u32,
    /// 0 to 9: a queue's jobs of a higher priority are leased first.
    #[serde(default)]
    pub priority: u8,
    /// When a scheduled job is due (present while it is scheduled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// The group it shares its queue fairly with others by, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// True once a cancel was asked for a running job that has not ended yet.
    #[serde(default)]
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub error: Option<JobError>,
    pub links: Links,
    /// The job's output so far (`links.output`), once it has some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
    /// The job's input: present only where a worker receives the job (lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

/// How much output a job has, as its `job.output` events announced it;
/// in a `job.output` event, also the part it announces: bytes `offset` to
/// `next_offset` (offsets of `links.output`), inline as `text` when the
/// output is text and the part is small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Output {
    /// Bytes of output so far.
    pub bytes: u64,
    /// Where the last announced part starts.
    pub offset: String,
    /// Where the output goes on (its length, as an offset).
    pub next_offset: String,
    /// The announced part, in a `job.output` event (text outputs, up to
    /// 64 KiB; else read it from `links.output` at `offset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Where and which events a job's webhook receives (API.md §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// An `http` or `https` URL that the SSRF guard lets through.
    #[schema(min_length = 1, max_length = 2048)]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Each delivery also carries a `webhook-jwt` header: an ES256 token
    /// over the body's digest, verifiable with `/.well-known/jwks.json`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jwt: bool,
}

/// `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"queue": "demo", "input": {"seconds": 2}}))]
pub struct SubmitRequest {
    /// A configured queue.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]+$")]
    pub queue: String,
    #[serde(default)]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
    /// At most `limits.max_attempts` (100 by default).
    #[schema(minimum = 1)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Seconds one attempt may take, at most 604800 (a week).
    #[schema(exclusive_minimum = 0, maximum = 604800)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Seconds a finished job is kept, at most `limits.max_ttl` (30 days
    /// by default).
    #[schema(minimum = 0)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<f64>,
    /// The job's output stream (`links.output`): its content type, which
    /// every append must then have (else the first append's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputRequest>,
    /// 0 to 9 (default 0): a queue's jobs of a higher priority are leased
    /// first; first in, first out within a priority.
    #[schema(minimum = 0, maximum = 9)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Seconds from now until the job is due; it is `scheduled` until
    /// then. At most `limits.max_delay` (a year by default). Not with `run_at`.
    #[schema(minimum = 0)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<f64>,
    /// When the job is due (RFC 3339); it is `scheduled` until then (a time
    /// past: queued at once). Not with `delay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// A key (a customer id, say) by which the queue is shared fairly: the
    /// groups of a queue take turns, so that one with many jobs queued does
    /// not hold back the others' (start-time fair queuing).
    #[schema(min_length = 1, max_length = 128)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// What a submission says of its job's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputRequest {
    /// A media type, such as `text/plain` or `text/event-stream`.
    #[schema(min_length = 3, max_length = 255)]
    pub content_type: String,
}

/// One job of a `POST /v1/jobs:batch`: a submission as `POST /v1/jobs`
/// takes it, with its own idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BatchJob {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(flatten)]
    pub job: SubmitRequest,
}

/// By hand: serde's `flatten` would let unknown fields through, where a
/// submission refuses them.
impl<'de> Deserialize<'de> for BatchJob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = serde_json::Map::<String, Value>::deserialize(d)?;
        let idempotency_key = match fields.remove("idempotency_key") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k),
            Some(_) => return Err(D::Error::custom("idempotency_key must be a string")),
        };
        let job = SubmitRequest::deserialize(Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(BatchJob {
            idempotency_key,
            job,
        })
    }
}

/// `POST /v1/jobs:batch`: up to 1,000 jobs, accepted in one commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSubmitRequest {
    pub jobs: Vec<BatchJob>,
}

/// What became of one job of a batch: `status` as `POST /v1/jobs` would
/// have answered (202 with the job, `replayed` for an idempotent replay;
/// or a problem).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchSubmitted {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// The answer to `POST /v1/jobs:batch`, in the request's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchSubmitAnswer {
    pub jobs: Vec<BatchSubmitted>,
}

/// `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
}

/// One attempt at a webhook delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttempt {
    pub at: DateTime<Utc>,
    /// The receiver's status code, if it answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// A delivery owed to (or made to) a job's webhook endpoint, or a reply
/// owed to the requester over a message broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    pub id: String,
    pub job_id: String,
    /// How it leaves: `webhook`, or a broker (`amqp`, ...).
    pub channel: String,
    /// The event it carries (`job.succeeded`, ...).
    pub event: String,
    /// A webhook's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A broker reply's destination and correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Attempts since it was (re)queued.
    pub attempts: u32,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// The attempt log (on a job's deliveries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<DeliveryAttempt>>,
}

/// `GET /v1/deliveries`, `GET /v1/jobs/{id}/deliveries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
    pub next_cursor: Option<String>,
}

/// A webhook endpoint (a tenant's URL) that has failed: dead letters in a
/// row, and whether it is paused (its deliveries held).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Endpoint {
    pub tenant: String,
    pub channel: String,
    pub url: String,
    pub dead_in_a_row: u32,
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Deliveries held while paused.
    pub held: u64,
}

/// `GET /v1/endpoints`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<Endpoint>,
}

/// `POST /v1/endpoints/resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeEndpoint {
    pub url: String,
    /// The endpoint's tenant: for a key of every tenant (`*`) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// `POST /v1/queues/{queue}/lease`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// A name for the worker, shown in logs.
    #[schema(max_length = 200)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Seconds the lease lasts before a heartbeat must renew it, at most 3600.
    #[schema(minimum = 0, maximum = 3600)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<f64>,
    /// Seconds to wait for a job when none is ready (long poll), at most 60.
    #[schema(minimum = 0, maximum = 60)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<f64>,
    /// Lease up to this many jobs at once (1 to 100); the answer is then a
    /// [`LeaseBatch`].
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
    /// Outcomes of jobs leased before (at most 1000), applied as `POST
    /// /v1/workers/complete` applies them, in the same round trip as this
    /// lease. Needs `batch`: their answers come back in the
    /// [`LeaseBatch`]'s `outcomes` (then a 200 even when no job was
    /// leased). They are applied at once; only their answer waits for the
    /// lease, so a worker carrying outcomes may want a short `wait`. If
    /// the call fails, they may have been applied: sent again, those
    /// answer 409.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<Outcome>,
}

/// One leased job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    pub job: Job,
    pub lease_id: String,
    pub lease_expires_at: DateTime<Utc>,
    /// W3C Trace Context for the work, when the job is in a trace: the
    /// position of replyd's span of this attempt (or, when replyd makes
    /// no spans, of the submitter's), for the worker's span to hang below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// The answer to a lease request: one lease, or (when the request named a
/// `batch` size) a batch of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LeaseAnswer {
    One(Box<Lease>),
    Batch(LeaseBatch),
}

/// The answer to a lease request that named a `batch` size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeaseBatch {
    pub leases: Vec<Lease>,
    /// The answers to the request's `outcomes`, in order (absent when it
    /// had none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<OutcomeAnswer>,
}

/// `POST /v1/jobs/{id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub lease_id: String,
    /// Seconds to extend the lease by (default: the lease's original
    /// length), at most 3600.
    #[schema(minimum = 0, maximum = 3600)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<f64>,
}

/// The answer to heartbeat and progress: whether the worker should stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeaseStatus {
    pub cancel_requested: bool,
    pub lease_expires_at: DateTime<Utc>,
}

/// `POST /v1/jobs/{id}/progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressRequest {
    pub lease_id: String,
    #[schema(minimum = 0, maximum = 100)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[schema(max_length = 4096)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /v1/jobs/{id}/complete` with a JSON result. A raw result is sent
/// instead as the body with its own content type and the lease id in the
/// `Replyd-Lease-Id` header or the `lease_id` query parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub lease_id: String,
    #[serde(default)]
    pub result: Value,
}

/// What a worker says went wrong: a message, or a code and a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum FailReason {
    Message(String),
    Error {
        #[serde(default)]
        code: Option<String>,
        message: String,
    },
}

/// `POST /v1/jobs/{id}/fail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    pub lease_id: String,
    pub error: FailReason,
    /// Try again (with backoff) if attempts remain.
    #[serde(default)]
    pub retry: bool,
}

/// One outcome in a `POST /v1/workers/complete`: a result (`result`, JSON,
/// default null) or, with `error`, a failure (`retry` as for `fail`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub job_id: String,
    pub lease_id: String,
    #[serde(default)]
    pub result: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<FailReason>,
    #[serde(default)]
    pub retry: bool,
}

/// `POST /v1/workers/complete`: many jobs' outcomes in one call, each
/// fenced by its own lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutcomesRequest {
    pub outcomes: Vec<Outcome>,
}

/// What became of one outcome: `status` as the one-job call would have
/// answered (200 and the job's `state` after it, or a problem: 404,
/// 409…). The job itself is not repeated: `GET /v1/jobs/{id}` has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutcomeAnswer {
    pub job_id: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// The answer to `POST /v1/workers/complete`, in the request's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutcomesAnswer {
    pub outcomes: Vec<OutcomeAnswer>,
}

/// The header that carries the lease id with a raw (non-JSON) result.
pub const LEASE_ID_HEADER: &str = "replyd-lease-id";

/// The header that names the job behind a gateway's answer (a streamed
/// pass-through, whose output it is).
pub const JOB_ID_HEADER: &str = "replyd-job-id";

/// An RFC 9457 problem. Every error replyd answers has this body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.title, self.status, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_percent_is_an_integer_on_the_wire() {
        let p = Progress {
            percent: Some(40.0),
            message: None,
        };
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"percent":40}"#);
        let p = Progress {
            percent: Some(12.5),
            message: Some("x".into()),
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"percent":12.5,"message":"x"}"#
        );
    }

    #[test]
    fn fail_reason_accepts_a_string_or_an_object() {
        let r: FailRequest =
            serde_json::from_str(r#"{"lease_id":"l","error":"boom","retry":true}"#).unwrap();
        assert_eq!(r.error, FailReason::Message("boom".into()));
        assert!(r.retry);
        let r: FailRequest =
            serde_json::from_str(r#"{"lease_id":"l","error":{"code":"x","message":"m"}}"#).unwrap();
        assert!(matches!(r.error, FailReason::Error { .. }));
        assert!(!r.retry);
    }

    #[test]
    fn submit_rejects_unknown_fields() {
        let e = serde_json::from_str::<SubmitRequest>(r#"{"queue":"q","inptu":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inptu"), "{e}");
    }

    #[test]
    fn state_round_trips() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("done"), None);
    }
}
