//! The application: the store, the clock, auth and configuration, and the
//! operations every ingress and executor shares (submit, wait, lease, act on
//! a lease). HTTP handlers and the in-process executors both call these, so
//! a job behaves the same whichever way it came in or is worked on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use replyd_core::job::{Command, JobRecord, JobState, NewJob};
use replyd_core::store::{JobOutput, LeaseQuery, Leased, Store, Submitted};
use replyd_core::{Clock, JobId, Tenant};
use replyd_proto as proto;
use tokio_util::sync::CancellationToken;

use crate::auth::{Action, Authenticator, Caller, JobTokens};
use crate::config::{Config, secs};
use crate::error::{ApiError, ApiResult};
use crate::live::{Hub, Live, Target};
use crate::render::Renderer;

/// The longest a request may be held (long polling, `Prefer: wait`).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How soon a waiting lease looks again when its queue holds a job that
/// is due but was not its to take (another lease's, another tenant's,
/// held by a limit): the ring of a job queued anew wakes it sooner.
const DUE_RECHECK: Duration = Duration::from_millis(250);

/// Shared by every request and background task of one server.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub clock: Clock,
    pub auth: Authenticator,
    /// Routes committed events to this node's SSE and WebSocket clients.
    pub hub: Arc<Hub>,
    /// The job's wire representation, for every channel.
    pub render: Renderer,
    /// Vets, signs and sends webhooks.
    pub webhooks: Arc<crate::webhooks::Runtime>,
    /// Cancelled when the server begins to shut down: long polls answer at
    /// once and background tasks stop.
    pub shutdown: CancellationToken,
    /// What clients hold (connections, streams, waits) and the tenants'
    /// submission buckets.
    pub limits: Arc<crate::limits::Limiter>,
    /// Idempotency keys whose first request is still being accepted.
    in_flight: Mutex<HashSet<(Tenant, String)>>,
    /// The in-process executors' outcomes, applied in batches.
    pub finisher: crate::finisher::Finisher,
    /// Readers waiting for Durable Streams to move.
    pub tails: Arc<crate::tails::Tails>,
    /// Jobs' outputs announced as `job.output` events; every end of an
    /// attempt is applied through it.
    pub outputs: Arc<crate::outputs::Announcer>,
    /// What each tenant's streams hold, against its bound.
    pub stream_bytes: Arc<crate::limits::StreamBytes>,
    /// The queues' last hour, for the console.
    pub stats: crate::stats::Stats,
    /// Traces: what is passed on, and replyd's own spans.
    pub telemetry: crate::telemetry::Telemetry,
    /// Queues scheduled jobs as they come due.
    pub promoter: crate::scheduler::Promoter,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// A validated submission.
#[derive(Debug)]
pub struct Submission {
    pub tenant: Tenant,
    pub request: proto::SubmitRequest,
    pub idempotency_key: Option<String>,
    /// A digest of the canonical request, to tell a replay from a reuse
    /// (computed only when there is an idempotency key).
    pub request_hash: Option<String>,
    /// Where the reply goes, for a request that came over a broker.
    pub reply: Option<replyd_core::outbox::ReplySpec>,
    /// The trace it came in (W3C Trace Context), if any.
    pub trace: Option<replyd_core::trace::TraceContext>,
    /// Which ingress it came by (`http`, `ws`, `amqp`, …), for its span.
    pub via: &'static str,
}

impl App {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        clock: Clock,
        secret: Vec<u8>,
        telemetry: crate::telemetry::Telemetry,
        shutdown: CancellationToken,
    ) -> App {
        let tokens = JobTokens::new(secret);
        let auth = Authenticator::new(&config.api_keys, tokens.clone());
        let render = Renderer::new(tokens);
        let nofile = crate::limits::raise_nofile();
        let limits = crate::limits::Limiter::new(&config.limits, nofile);
        let conns = limits.quota(crate::limits::Held::Connection);
        tracing::info!(
            open_files = nofile,
            max_connections = conns.total,
            max_connections_per_ip = conns.per_ip,
            "connection limits (0: none)"
        );
        let outputs = Arc::new(crate::outputs::Announcer::new(
            store.clone(),
            crate::config::secs(config.durable_streams.output_events),
        ));
        let stream_bytes = Arc::new(crate::limits::StreamBytes::new(
            config.durable_streams.max_tenant_bytes,
        ));
        let hub = Hub::new(config.streams.buffer);
        hub.bells.limit(
            config
                .queues
                .iter()
                .filter(|(_, q)| q.limits().max_running.is_some())
                .map(|(name, _)| name.clone()),
        );
        App {
            stream_bytes,
            limits,
            hub,
            webhooks: Arc::new(crate::webhooks::Runtime {
                telemetry: telemetry.clone(),
                ..crate::webhooks::Runtime::new(
                    &config.webhooks,
                    config.webhook_issuer(),
                    render.clone(),
                )
            }),
            render,
            config,
            finisher: crate::finisher::Finisher::new(outputs.clone(), clock.clone()),
            outputs,
            store,
            clock,
            auth,
            shutdown,
            in_flight: Mutex::new(HashSet::new()),
            tails: Arc::default(),
            stats: Default::default(),
            telemetry,
            promoter: Default::default(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// What an outbox dispatcher works with.
    pub fn outbox(&self) -> crate::outbox::Context {
        crate::outbox::Context {
            store: self.store.clone(),
            clock: self.clock.clone(),
            shutdown: self.shutdown.clone(),
            watch: self.config.operations.watch(),
            telemetry: self.telemetry.clone(),
        }
    }

    /// Accepts a job: durable when this returns.
    pub async fn submit(&self, s: Submission) -> ApiResult<Submitted> {
        let started = self.now();
        let req = &s.request;
        let Some(queue) = self.config.queues.get(&req.queue) else {
            return Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "unknown-queue",
                format!("no queue named {:?} is configured", req.queue),
            ));
        };
        let limits = &self.config.limits;
        let max_attempts = req.max_attempts.unwrap_or(queue.max_attempts);
        if max_attempts == 0 || max_attempts > limits.max_attempts {
            return Err(ApiError::bad_request(format!(
                "max_attempts must be between 1 and {}",
                limits.max_attempts
            )));
        }
        let timeout = positive_secs("timeout", req.timeout, queue.timeout, 7.0 * 86_400.0)?;
        let ttl = match req.ttl {
            Some(v) if !(v >= 0.0 && v <= limits.max_ttl) => {
                return Err(ApiError::bad_request(format!(
                    "ttl must be between 0 and {} seconds",
                    limits.max_ttl
                )));
            }
            v => secs(v.unwrap_or(queue.ttl)),
        };
        let webhook = match &req.webhook {
            Some(w) => Some(self.webhooks.vet(&s.tenant, w).await?),
            None => None,
        };
        let input = serde_json::to_vec(&req.input)
            .map_err(|e| ApiError::bad_request(format!("input: {e}")))?;
        let output_type = match &req.output {
            Some(o) if !replyd_core::stream::is_media_type(&o.content_type) => {
                return Err(ApiError::bad_request(
                    "output.content_type must be a media type, such as text/plain",
                ));
            }
            o => o.as_ref().map(|o| o.content_type.trim().to_string()),
        };
        let priority = req.priority.unwrap_or(0);
        if priority > replyd_core::job::MAX_PRIORITY {
            return Err(ApiError::bad_request(format!(
                "priority must be between 0 and {}",
                replyd_core::job::MAX_PRIORITY
            )));
        }
        let run_at = self.due_time(req)?;
        let group = match &req.group {
            Some(g)
                if g.is_empty() || g.chars().count() > 128 || g.chars().any(char::is_control) =>
            {
                return Err(ApiError::bad_request(
                    "group must be 1 to 128 characters, none of them control characters",
                ));
            }
            g => g.clone(),
        };
        let new = NewJob {
            id: JobId::new(),
            tenant: s.tenant.clone(),
            queue: req.queue.clone(),
            input: input.into(),
            max_attempts,
            timeout,
            ttl,
            webhook,
            reply: s.reply,
            idempotency_key: s.idempotency_key.clone(),
            request_hash: s.request_hash,
            output_type,
            trace: self.telemetry.begin(s.trace),
            priority,
            head_start: secs(queue.priority_step * f64::from(priority)),
            group,
            run_at,
        };
        let _guard = match &s.idempotency_key {
            Some(key) => Some(self.claim_key(&s.tenant, key)?),
            None => None,
        };
        let submitted = self.store.submit(new, self.now()).await?;
        if let Submitted::Created(job) = &submitted {
            self.telemetry.submitted(job, (started, self.now()), s.via);
            if job.state == JobState::Scheduled {
                self.promoter.scheduled(job.run_at);
            }
        }
        Ok(submitted)
    }

    /// When a submission asks its job to be due (`delay` or `run_at`), if
    /// later than now.
    fn due_time(&self, req: &proto::SubmitRequest) -> ApiResult<Option<DateTime<Utc>>> {
        let max = self.config.limits.max_delay;
        let at = match (req.delay, req.run_at) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request("give delay or run_at, not both"));
            }
            (Some(d), None) if !(d >= 0.0 && d <= max) => {
                return Err(ApiError::bad_request(format!(
                    "delay must be between 0 and {max} seconds"
                )));
            }
            (Some(d), None) => self.now() + chrono::Duration::milliseconds((d * 1000.0) as i64),
            (None, Some(at)) => {
                if (at - self.now()).num_milliseconds() as f64 > max * 1000.0 {
                    return Err(ApiError::bad_request(format!(
                        "run_at must be at most {max} seconds from now"
                    )));
                }
                at
            }
            (None, None) => return Ok(None),
        };
        Ok((at > self.now()).then_some(at))
    }

    /// Marks an idempotency key as being accepted; a second request with it
    /// meanwhile is 409 (IETF Idempotency-Key draft). The store's unique
    /// key decides across nodes.
    fn claim_key(&self, tenant: &Tenant, key: &str) -> ApiResult<KeyGuard<'_>> {
        let entry = (tenant.clone(), key.to_string());
        let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(entry.clone()) {
            return Err(ApiError::conflict(
                "idempotency-key-in-flight",
                "a request with this Idempotency-Key is still being processed",
            )
            .with_retry_after(1));
        }
        Ok(KeyGuard { app: self, entry })
    }

    /// Cancels a job for a caller allowed to: a queued job at once, a
    /// running one at its worker's next call.
    pub async fn cancel(&self, caller: &Caller, id: JobId) -> ApiResult<JobRecord> {
        self.job_for(caller, Action::Cancel, id).await?;
        Ok(self
            .store
            .apply(id, None, Command::Cancel, None, self.now())
            .await?)
    }

    /// Submits a failed or canceled job again as a new job of its tenant:
    /// its queue, input, attempts, timeout, time to live, webhook and
    /// output type (not its idempotency key, which stays with the first,
    /// nor a broker's reply address, whose requester had its answer).
    /// `old` is the job as the caller may see it (`job_for`, or a listing
    /// of the caller's jobs: a finished job's state does not change).
    pub async fn retry(&self, old: JobRecord) -> ApiResult<JobRecord> {
        let id = old.id;
        if !matches!(old.state, JobState::Failed | JobState::Canceled) {
            return Err(ApiError::conflict(
                "not-retryable",
                format!(
                    "only a failed or canceled job is retried; this one is {}",
                    old.state.as_str()
                ),
            ));
        }
        if !self.config.queues.contains_key(&old.queue) {
            return Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "unknown-queue",
                format!("no queue named {:?} is configured any more", old.queue),
            ));
        }
        let input = self.store.input(id).await?.ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::GONE,
                "job-expired",
                "the job's input is gone",
            )
        })?;
        let new = NewJob {
            id: JobId::new(),
            tenant: old.tenant,
            queue: old.queue,
            input,
            max_attempts: old.max_attempts,
            timeout: Duration::from_millis(old.timeout_ms),
            ttl: Duration::from_millis(old.ttl_ms),
            webhook: old.webhook,
            reply: None,
            idempotency_key: None,
            request_hash: None,
            output_type: old.output_type,
            // The new job is in the trace of the one it repeats.
            trace: self.telemetry.begin(old.trace),
            priority: old.priority,
            head_start: Duration::from_millis(old.head_start_ms),
            group: old.group,
            run_at: None,
        };
        Ok(self.store.submit(new, self.now()).await?.job().clone())
    }

    /// Loads a job the caller may act on. Missing, another tenant's, and
    /// purged jobs are 404; an expired one is 410. A caller who may not do
    /// `action` at all is refused before the job is looked up, so the
    /// answer is the same whether it exists or not.
    pub async fn job_for(
        &self,
        caller: &Caller,
        action: Action,
        id: JobId,
    ) -> ApiResult<JobRecord> {
        caller.may(action, true)?;
        let job = self
            .store
            .get(id)
            .await?
            .ok_or_else(ApiError::job_not_found)?;
        caller.reaches(id, &job.tenant)?;
        if job.is_expired(self.now()) {
            return Err(ApiError::new(
                axum::http::StatusCode::GONE,
                "job-expired",
                "the job's time to live has run out; its result is gone",
            ));
        }
        Ok(job)
    }

    /// Waits until `done(job)` holds, `wait` passes, or the server shuts
    /// down; returns the job as it then is. The hub wakes the wait only for
    /// this job's events; the job is re-read whenever one may have been
    /// missed, so nothing is.
    pub async fn wait_for(
        &self,
        job: JobRecord,
        wait: Duration,
        done: impl Fn(&JobRecord) -> bool,
    ) -> ApiResult<JobRecord> {
        if done(&job) || wait.is_zero() {
            return Ok(job);
        }
        let mut listener = self.hub.listen();
        listener.watch(0, Target::Job(job.id));
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        // Re-read after subscribing: a change between the caller's read and
        // the subscription is not lost.
        let mut job = self.store.get(job.id).await?.unwrap_or(job);
        while !done(&job) {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.shutdown.cancelled() => break,
                live = listener.recv() => match live {
                    Some(Live::Event { event, .. }) => {
                        if event.record.job.version > job.version {
                            job = event.record.job.clone();
                        }
                    }
                    Some(Live::Resync) => {
                        job = self.store.get(job.id).await?.unwrap_or(job);
                    }
                    // Cut off (or stopping): answer with what is true now.
                    None => {
                        job = self.store.get(job.id).await?.unwrap_or(job);
                        break;
                    }
                },
            }
        }
        Ok(job)
    }

    /// Leases up to `query.max` jobs, waiting up to `wait` for one to be
    /// ready, within the queue's limits (`max_running`, `rate`: the store
    /// counts them across every node). Wakes on new and retried jobs of
    /// the queue, on a job of a limited queue leaving its slot, when a
    /// job's backoff ends, and when a rate-limited queue's bucket refills.
    pub async fn lease(&self, mut query: LeaseQuery, wait: Duration) -> ApiResult<Vec<Leased>> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        if let Some(q) = self.config.queues.get(&query.queue) {
            query.limits = q.limits();
        }
        // A queue out of tokens has one again this soon (looked at no more
        // often than every 10 ms).
        let refill = query
            .limits
            .rate
            .map(|r| Duration::from_secs_f64((1.0 / r.per_sec).clamp(0.01, 60.0)));
        let bell = self
            .hub
            .bells
            .bell(&query.queue, query.tenant.as_ref(), query.max);
        loop {
            // Listening before looking: a job queued after the look rings.
            let listening = bell.listen();
            let rung = listening.notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            let leased = self.store.lease(query.clone(), self.now()).await?;
            if !leased.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(leased);
            }
            // Sleep until a job is queued, the deadline, or the next job's
            // backoff ends.
            let mut wake = deadline;
            if let Some(r) = refill {
                wake = wake.min(tokio::time::Instant::now() + r);
            }
            if let Some(at) = self.store.next_run_at(&query.queue).await? {
                // A job due already that this look did not get is being
                // leased by another, or is another tenant's, or held by
                // the queue's limits, or committed after the look (its
                // commit rings): waking for it at once only repeats the
                // empty look, as fast as the store answers.
                let until = (at - self.now()).to_std().unwrap_or(Duration::ZERO);
                wake = wake.min(tokio::time::Instant::now() + next_look(until));
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.shutdown.cancelled() => return Ok(Vec::new()),
                _ = rung => {}
            }
        }
    }

    /// A worker's call on a job it holds a lease on.
    pub async fn worker_apply(
        &self,
        caller: &Caller,
        id: JobId,
        cmd: Command,
        output: Option<JobOutput>,
    ) -> ApiResult<JobRecord> {
        caller.check(Action::Work, None)?;
        // The store checks the tenant inside the transaction: no extra read.
        Ok(self
            .outputs
            .apply(id, caller.tenant(), cmd, output, self.now())
            .await?)
    }

    /// A worker's outcomes for many jobs it holds leases on, each answered
    /// on its own (see [`replyd_core::Store::apply_many`]).
    pub async fn worker_apply_many(
        &self,
        caller: &Caller,
        moves: Vec<replyd_core::store::Move>,
    ) -> ApiResult<Vec<replyd_core::store::StoreResult<JobRecord>>> {
        caller.check(Action::Work, None)?;
        Ok(self
            .outputs
            .apply_many(caller.tenant(), moves, self.now())
            .await?)
    }

    /// Seconds a poller should wait before asking again: short while a job
    /// is young, longer as it ages, and guided by its progress when it
    /// reports some (about half the estimated time left), 1 to 30 s; the
    /// time left for a scheduled job.
    pub fn retry_after(&self, job: &JobRecord) -> u64 {
        let now = self.now();
        // A scheduled job: look again when it is due.
        if job.state == JobState::Scheduled {
            let left = (job.run_at - now).num_milliseconds().max(0) as u64;
            return left.div_ceil(1000).max(1);
        }
        let age = (now - job.created_at).num_milliseconds().max(0) as f64 / 1000.0;
        let mut s = age / 4.0;
        if let Some(p) = job.progress.as_ref().and_then(|p| p.percent)
            && p > 0.0
            && p < 100.0
        {
            let running = (now - job.updated_at).num_milliseconds().max(0) as f64 / 1000.0;
            let elapsed = age.max(running);
            s = (elapsed * (100.0 - p) / p) / 2.0;
        }
        s.clamp(1.0, 30.0).round() as u64
    }
}

/// What a valid Idempotency-Key looks like.
pub const IDEMPOTENCY_KEY_RULE: &str = "Idempotency-Key must be 1 to 255 visible ASCII characters";

/// An Idempotency-Key: a plain token or a quoted string, 1-255 visible
/// ASCII characters.
pub fn idempotency_key(raw: &str) -> ApiResult<String> {
    let s = raw.trim();
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    if (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        Ok(s.to_string())
    } else {
        Err(ApiError::bad_request(IDEMPOTENCY_KEY_RULE))
    }
}

/// The digest that tells a replay of an idempotent request from a reuse of
/// its key: SHA-256 of the canonical JSON (serde_json sorts object keys),
/// so the same request spelled differently is still the same.
pub fn request_hash(request: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(
        serde_json::to_vec(request).unwrap_or_default(),
    ))
}

/// Releases an in-flight idempotency key.
struct KeyGuard<'a> {
    app: &'a App,
    entry: (Tenant, String),
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.app
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.entry);
    }
}

fn positive_secs(name: &str, v: Option<f64>, default: f64, max: f64) -> ApiResult<Duration> {
    match v {
        None => Ok(secs(default)),
        Some(v) if v > 0.0 && v <= max => Ok(secs(v)),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} must be a number of seconds in (0, {max}]"
        ))),
    }
}

/// How long a waiting lease sleeps for its queue's next job, due in
/// `until`: until then, or [`DUE_RECHECK`] for one due already (the look
/// just made did not get it).
fn next_look(until: Duration) -> Duration {
    if until.is_zero() { DUE_RECHECK } else { until }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replyd_core::Tenant;
    use replyd_core::job::NewJob;
    use replyd_store::{SqliteOptions, SqliteStore};
    use std::sync::atomic::Ordering;

    /// A job due soon is looked for when it is due; only one due already
    /// waits for the recheck (a backoff ending in 10 ms is not 250 ms).
    #[test]
    fn a_lease_waits_for_the_next_job_until_it_is_due() {
        assert_eq!(
            next_look(Duration::from_millis(10)),
            Duration::from_millis(10)
        );
        assert_eq!(next_look(Duration::from_secs(3)), Duration::from_secs(3));
        assert_eq!(next_look(Duration::ZERO), DUE_RECHECK);
    }

    /// A worker of tenant a waits on a queue whose only job is tenant
    /// b's, due now: each look finds nothing, and the queue's next job is
    /// due already. It looks again on a ring or every `DUE_RECHECK`, not
    /// in a loop as fast as the store answers (which made hundreds of
    /// looks in this wait).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_lease_does_not_spin_on_a_due_job_it_cannot_take() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteStore::open(dir.path().join("a.db"), SqliteOptions::default())
            .await
            .unwrap();
        let clock = Clock::system();
        let app = App::new(
            Config::default(),
            Arc::new(sqlite.clone()),
            clock.clone(),
            vec![7; 32],
            crate::telemetry::Telemetry::default(),
            CancellationToken::new(),
        );
        let job = NewJob::plain(Tenant("b".into()), "q");
        app.store.submit(job, clock.now()).await.unwrap();
        let query = LeaseQuery {
            queue: "q".into(),
            tenant: Some(Tenant("a".into())),
            worker: "w".into(),
            length: Duration::from_secs(60),
            max: 10,
            limits: Default::default(),
        };
        // Each look is one write op of the SQLite writer.
        let before = sqlite.stats().ops.load(Ordering::Relaxed);
        let leased = app.lease(query, Duration::from_millis(700)).await.unwrap();
        let looks = sqlite.stats().ops.load(Ordering::Relaxed) - before;
        assert!(leased.is_empty(), "tenant a leased tenant b's job");
        // 700 ms / 250 ms: the first look and about three more (538
        // before the recheck's floor).
        assert!((1..=6).contains(&looks), "{looks} looks in a 700 ms wait");
    }
}
