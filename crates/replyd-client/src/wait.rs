//! Waiting for a job: its event stream (API.md §3), resumed with
//! `Last-Event-ID`, or long polling where the server does not stream.

use std::time::Duration;

use tokio::time::Instant;

use replyd_proto::Job;

use crate::events;
use crate::{Client, Error, Result};

/// How long one long-poll request asks the server to hold (`Prefer: wait=30`).
pub(crate) const LONG_POLL: Duration = Duration::from_secs(30);
/// The longest pause between two polls, whatever `Retry-After` says.
pub(crate) const MAX_POLL_PAUSE: Duration = Duration::from_secs(5);
/// The pause between polls when the server gives no `Retry-After`.
pub(crate) const DEFAULT_POLL_PAUSE: Duration = Duration::from_secs(1);
/// The shortest pause between polls, so that `Retry-After: 0` cannot spin.
pub(crate) const MIN_POLL_PAUSE: Duration = Duration::from_millis(100);

/// How a job is followed until it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Server-Sent Events: `GET /v1/jobs/{id}/events`, an event per change.
    Events,
    /// Long polling: `GET /v1/jobs/{id}` with `If-None-Match` and
    /// `Prefer: wait`. Changes that come close together may be seen as one.
    Polling,
}

/// How [`Client::wait_with_options`] waits.
#[derive(Debug, Clone, Default)]
pub struct WaitOptions {
    /// Give up with [`Error::Timeout`] once this has passed.
    pub timeout: Option<Duration>,
    /// `None` (the default): events, falling back to polling when the
    /// server does not stream or the stream keeps failing. `Some(t)`: only
    /// `t`; with [`Transport::Events`], a stream failure is the error.
    pub transport: Option<Transport>,
}

/// What [`Client::wait_with_options`] answers.
#[derive(Debug)]
pub struct Waited {
    /// The finished job.
    pub job: Job,
    /// The transport that saw the job finish.
    pub transport: Transport,
    /// How many times the event stream was resumed (`Last-Event-ID`) after
    /// a dropped connection or a `stream.overflow`.
    pub reconnects: u32,
    /// Why events were given up for polling, when they were.
    pub fallback: Option<Error>,
}

impl Client {
    /// Waits until the job is finished and answers it. See [`Client::wait_with`].
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<Job> {
        self.wait_with(id, timeout, |_| {}).await
    }

    /// Waits until the job is finished (succeeded, failed or canceled) and
    /// answers it, calling `on_change` with the job after each of its
    /// events (accepted, started, each progress, ..., the terminal one), so
    /// that a caller can draw progress. A job followed from its start is
    /// first seen as it was accepted: the stream replays its history.
    ///
    /// Follows the job's event stream ([`Client::events`]), resuming with
    /// `Last-Event-ID` when the connection drops. Where the server does not
    /// stream (404, 405 or 501 on the events endpoint, an answer that is not
    /// `text/event-stream`) or the stream keeps failing, it falls back to
    /// long polling (`If-None-Match` with the last `ETag` and
    /// `Prefer: wait=30`, pausing as `Retry-After` says where the server
    /// does not hold the request), without calling back twice for the same
    /// state. With a `timeout`, gives up with [`Error::Timeout`] once it has
    /// passed. See [`Client::wait_with_options`] to choose the transport
    /// and learn which one was used.
    pub async fn wait_with<F>(
        &self,
        id: &str,
        timeout: Option<Duration>,
        on_change: F,
    ) -> Result<Job>
    where
        F: FnMut(&Job),
    {
        let opts = WaitOptions {
            timeout,
            transport: None,
        };
        Ok(self.wait_with_options(id, &opts, on_change).await?.job)
    }

    /// [`Client::wait_with`], with a choice of transport, answering which
    /// one saw the job finish.
    pub async fn wait_with_options<F>(
        &self,
        id: &str,
        opts: &WaitOptions,
        mut on_change: F,
    ) -> Result<Waited>
    where
        F: FnMut(&Job),
    {
        let deadline = opts.timeout.map(|t| Instant::now() + t);
        let mut seen: Option<Job> = None;
        let mut reconnects = 0;
        let mut fallback = None;
        if opts.transport != Some(Transport::Polling) {
            let mut follower = events::Follower::new(self.clone(), id, None);
            let outcome = loop {
                let step = match deadline {
                    Some(deadline) => {
                        match tokio::time::timeout_at(deadline, follower.next()).await {
                            Ok(step) => step,
                            Err(_) => break StreamOutcome::TimedOut,
                        }
                    }
                    None => follower.next().await,
                };
                match step {
                    Ok(events::Step::Event(event)) => {
                        on_change(&event.job);
                        let terminal = event.is_terminal();
                        seen = Some(event.job);
                        if terminal {
                            break StreamOutcome::Finished;
                        }
                    }
                    Ok(events::Step::End | events::Step::NoContent) => break StreamOutcome::Ended,
                    Err(e) => break StreamOutcome::Failed(e),
                }
            };
            reconnects = follower.reconnects;
            let waited = |job| Waited {
                job,
                transport: Transport::Events,
                reconnects,
                fallback: None,
            };
            match outcome {
                StreamOutcome::Finished => {
                    return Ok(waited(seen.expect("a finished stream saw the job")));
                }
                StreamOutcome::TimedOut => {
                    let job = match seen {
                        Some(job) => job,
                        None => {
                            let job = self.get(id).await?.job;
                            on_change(&job);
                            if job.state.is_terminal() {
                                return Ok(waited(job));
                            }
                            job
                        }
                    };
                    return Err(Error::Timeout { job: Box::new(job) });
                }
                // The stream had ended before we came (204): read the job.
                StreamOutcome::Ended => {
                    let job = self.get(id).await?.job;
                    if seen.as_ref() != Some(&job) {
                        on_change(&job);
                    }
                    if job.state.is_terminal() {
                        return Ok(waited(job));
                    }
                    seen = Some(job);
                }
                StreamOutcome::Failed(e) if opts.transport == Some(Transport::Events) => {
                    return Err(e);
                }
                StreamOutcome::Failed(e) => fallback = Some(e),
            }
        }
        let job = self
            .poll_until_done(id, deadline, seen, &mut on_change)
            .await?;
        Ok(Waited {
            job,
            transport: Transport::Polling,
            reconnects,
            fallback,
        })
    }

    /// Long polls the job until it is finished or `deadline` passes.
    /// `on_change` is called on every change, and first with the state the
    /// first read finds unless that is `seen` (what the caller last saw).
    pub(crate) async fn poll_until_done<F>(
        &self,
        id: &str,
        deadline: Option<Instant>,
        seen: Option<Job>,
        on_change: &mut F,
    ) -> Result<Job>
    where
        F: FnMut(&Job),
    {
        let mut last = self.get(id).await?;
        if seen.as_ref() != Some(&last.job) {
            on_change(&last.job);
        }
        // Whether to pause before the next request: set when the server
        // answered "unchanged" without holding the request.
        let mut pause = false;
        loop {
            if last.job.state.is_terminal() {
                return Ok(last.job);
            }
            let remaining = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Timeout {
                            job: Box::new(last.job),
                        });
                    }
                    Some(left)
                }
                None => None,
            };
            if pause || last.etag.is_none() {
                let mut nap = poll_pause(last.retry_after);
                if let Some(left) = remaining {
                    nap = nap.min(left);
                }
                tokio::time::sleep(nap).await;
            }
            let hold = remaining.map_or(LONG_POLL, |left| left.min(LONG_POLL));
            let started = Instant::now();
            let fresh = match &last.etag {
                Some(etag) => self.get_if_changed(id, etag, Some(hold)).await?,
                None => Some(self.get(id).await?),
            };
            let held = started.elapsed() + Duration::from_secs(1) >= hold;
            match fresh {
                Some(st) if st.etag != last.etag || st.job != last.job => {
                    on_change(&st.job);
                    last = st;
                    pause = false;
                }
                Some(st) => {
                    last.retry_after = st.retry_after;
                    pause = !held;
                }
                None => pause = !held,
            }
        }
    }
}

/// How following a job's events ended, in [`Client::wait_with_options`].
enum StreamOutcome {
    /// The terminal event came.
    Finished,
    /// The stream had already ended (204).
    Ended,
    TimedOut,
    Failed(Error),
}

/// How long to pause before polling again, given the server's `Retry-After`.
pub(crate) fn poll_pause(retry_after: Option<Duration>) -> Duration {
    retry_after
        .unwrap_or(DEFAULT_POLL_PAUSE)
        .clamp(MIN_POLL_PAUSE, MAX_POLL_PAUSE)
}
