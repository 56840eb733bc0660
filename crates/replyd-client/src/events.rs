//! Following one job over Server-Sent Events (API.md §3):
//! `GET /v1/jobs/{id}/events` replays the job's history, then its live
//! events, and closes after the terminal one.
//!
//! A [`Follower`] owns the connection: it parses the stream with
//! `eventsource-stream`, resumes with `Last-Event-ID` after a dropped
//! connection or a `stream.overflow` (a few times, with a short backoff),
//! and never yields an event id twice. [`Client::events`] and
//! [`Client::wait_with_options`] are built on it.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};

use crate::error::error_from;
use crate::jobs::header_str;
use crate::{Client, Error, Result};
use replyd_proto::Job;

/// Consecutive failed connections (refused, 5xx, broken off before an
/// event) after which following the stream is given up.
const MAX_STREAM_FAILURES: u32 = 5;
/// The pause before the first retry after a failed connection; it doubles
/// with each further failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the answer to `GET .../events` may take to begin. (The request
/// itself has no timeout: the stream lives as long as the job runs.)
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// A stream with no bytes for this long is taken as dead and resumed: the
/// server sends a keep-alive comment every 15 s by default.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// One event of a job's stream: what happened, and the job right after it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    /// The event id. Pass it as `last_event_id` to [`Client::events`] to
    /// resume right after this event.
    pub id: u64,
    /// The event's name: `job.accepted`, `job.started`, `job.progress`,
    /// `job.retrying`, `job.cancel_requested`, `job.succeeded`, `job.failed`
    /// or `job.canceled`.
    pub event: String,
    /// The job's representation after the event (as `GET /v1/jobs/{id}`
    /// answers it).
    pub job: Job,
}

impl JobEvent {
    /// Whether this is the job's last event (it succeeded, failed or was
    /// canceled): the stream ends after it.
    pub fn is_terminal(&self) -> bool {
        self.job.state.is_terminal()
    }
}

/// What went wrong with one chunk of the response body.
#[derive(Debug)]
enum ChunkError {
    Http(reqwest::Error),
    /// No bytes (not even a keep-alive) for [`IDLE_TIMEOUT`].
    Idle,
}

type Frames = Pin<
    Box<dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<ChunkError>>> + Send>,
>;

/// What [`Follower::next`] found.
#[derive(Debug)]
pub(crate) enum Step {
    /// The next event (ids only increase).
    Event(Box<JobEvent>),
    /// The stream is over: the terminal event was the last `Event`.
    End,
    /// The server answered `204 No Content`: the stream had already ended
    /// at or before the id resumed from.
    NoContent,
}

/// Follows one job's event stream across reconnects.
pub(crate) struct Follower {
    client: Client,
    job_id: String,
    /// The id of the last event yielded: sent as `Last-Event-ID`.
    last_event_id: Option<u64>,
    frames: Option<Frames>,
    /// Whether a connection has been opened before (so the next one resumes).
    connected_before: bool,
    /// Failed connections since the last event arrived.
    failures: u32,
    /// Connections opened to resume after a broken one.
    pub(crate) reconnects: u32,
    /// The terminal event was yielded (or the server said 204).
    done: bool,
}

impl Follower {
    pub(crate) fn new(client: Client, job_id: &str, last_event_id: Option<u64>) -> Follower {
        Follower {
            client,
            job_id: job_id.to_owned(),
            last_event_id,
            frames: None,
            connected_before: false,
            failures: 0,
            reconnects: 0,
            done: false,
        }
    }

    /// The next event, or the end. An error ends the stream: the endpoint
    /// is missing or refused the request (404, 405, 501, any other 4xx),
    /// answered something that is not an event stream, sent a malformed
    /// event, or kept failing [`MAX_STREAM_FAILURES`] times in a row.
    pub(crate) async fn next(&mut self) -> Result<Step> {
        loop {
            if self.done {
                return Ok(Step::End);
            }
            let Some(frames) = self.frames.as_mut() else {
                if self.failures > 0 {
                    tokio::time::sleep(backoff(self.failures)).await;
                }
                match open(self.request()).await {
                    Ok(Some(frames)) => {
                        if self.connected_before {
                            self.reconnects += 1;
                        }
                        self.connected_before = true;
                        self.frames = Some(frames);
                    }
                    Ok(None) => {
                        self.done = true;
                        return Ok(Step::NoContent);
                    }
                    Err(OpenError::Retry(e)) => self.failed(e)?,
                    Err(OpenError::Fatal(e)) => {
                        self.done = true;
                        return Err(e);
                    }
                }
                continue;
            };
            match frames.next().await {
                Some(Ok(frame)) => match frame.event.as_str() {
                    // The server dropped this slow reader: resume (after a
                    // short pause; many in a row without an event give up).
                    "stream.overflow" => {
                        self.frames = None;
                        self.failed(Error::Stream(
                            "the server dropped the stream: this reader fell behind".into(),
                        ))?;
                    }
                    name if name.starts_with("job.") => {
                        let event = match parse_event(frame) {
                            Ok(event) => event,
                            Err(e) => {
                                self.done = true;
                                self.frames = None;
                                return Err(e);
                            }
                        };
                        if self.last_event_id.is_some_and(|last| event.id <= last) {
                            continue;
                        }
                        self.last_event_id = Some(event.id);
                        self.failures = 0;
                        if event.is_terminal() {
                            self.done = true;
                            self.frames = None;
                        }
                        return Ok(Step::Event(Box::new(event)));
                    }
                    // `stream.reset` and names this client does not know.
                    _ => {}
                },
                Some(Err(EventStreamError::Transport(ChunkError::Http(e)))) => {
                    self.frames = None;
                    self.failed(Error::Http(e))?;
                }
                Some(Err(EventStreamError::Transport(ChunkError::Idle))) => {
                    self.frames = None;
                    self.failed(Error::Stream(format!(
                        "nothing received for {} s",
                        IDLE_TIMEOUT.as_secs()
                    )))?;
                }
                Some(Err(EventStreamError::Utf8(e))) => {
                    self.done = true;
                    self.frames = None;
                    return Err(Error::Stream(format!("the event stream is not UTF-8: {e}")));
                }
                Some(Err(EventStreamError::Parser(e))) => {
                    self.done = true;
                    self.frames = None;
                    return Err(Error::Stream(format!("malformed event stream: {e}")));
                }
                None => {
                    self.frames = None;
                    self.failed(Error::Stream(
                        "the stream closed before the job finished".into(),
                    ))?;
                }
            }
        }
    }

    /// Counts a failed or broken connection; gives up (with `err`) after too
    /// many in a row.
    fn failed(&mut self, err: Error) -> Result<()> {
        self.failures += 1;
        if self.failures >= MAX_STREAM_FAILURES {
            self.done = true;
            return Err(err);
        }
        Ok(())
    }

    /// The request that opens the stream, resuming after `last_event_id`.
    fn request(&self) -> reqwest::RequestBuilder {
        let rb = self
            .client
            .request(
                reqwest::Method::GET,
                self.client.job_url(&self.job_id, Some("events")),
            )
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-store");
        match self.last_event_id {
            Some(last) => rb.header("last-event-id", last.to_string()),
            None => rb,
        }
    }
}

/// Why a stream could not be opened.
enum OpenError {
    /// Worth another try: the server was unreachable, slow to answer,
    /// overloaded or briefly failing.
    Retry(Error),
    /// Would fail the same way again: the endpoint is missing, the request
    /// was refused, the answer is not an event stream.
    Fatal(Error),
}

/// Opens a stream with `rb`. `None` for a 204.
async fn open(rb: reqwest::RequestBuilder) -> Result<Option<Frames>, OpenError> {
    let resp = match tokio::time::timeout(OPEN_TIMEOUT, rb.send()).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Err(OpenError::Retry(Error::Http(e))),
        Err(_) => {
            return Err(OpenError::Retry(Error::Stream(format!(
                "no answer within {} s",
                OPEN_TIMEOUT.as_secs()
            ))));
        }
    };
    match resp.status() {
        StatusCode::NO_CONTENT => return Ok(None),
        StatusCode::OK => {}
        status if retryable(status) => return Err(OpenError::Retry(error_from(resp).await)),
        _ => return Err(OpenError::Fatal(error_from(resp).await)),
    }
    let content_type = header_str(resp.headers(), &CONTENT_TYPE).unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("text/event-stream") {
        return Err(OpenError::Fatal(Error::Stream(format!(
            "the events endpoint answered {content_type:?}, not text/event-stream"
        ))));
    }
    let chunks = Box::pin(resp.bytes_stream().map_err(ChunkError::Http));
    let guarded = futures::stream::unfold(Some(chunks), |chunks| async move {
        let mut chunks = chunks?;
        match tokio::time::timeout(IDLE_TIMEOUT, chunks.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(chunks))),
            Ok(None) => None,
            Err(_) => Some((Err(ChunkError::Idle), None)),
        }
    });
    Ok(Some(Box::pin(guarded.eventsource())))
}

/// Whether an answer is worth asking again for: the server is overloaded
/// or briefly failing. Any other refusal (the endpoint is missing, the
/// request refused) would come again.
fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// The pause before a retry after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(8);
    (FIRST_BACKOFF * factor).min(MAX_BACKOFF)
}

/// A `job.*` frame as a [`JobEvent`].
fn parse_event(frame: eventsource_stream::Event) -> Result<JobEvent> {
    let id = frame.id.trim().parse::<u64>().map_err(|_| {
        Error::Stream(format!(
            "event {} has no usable id ({:?})",
            frame.event, frame.id
        ))
    })?;
    let job = serde_json::from_str(&frame.data).map_err(|source| Error::Decode {
        status: 200,
        source,
    })?;
    Ok(JobEvent {
        id,
        event: frame.event,
        job,
    })
}

impl Client {
    /// Follows a job over Server-Sent Events (`GET /v1/jobs/{id}/events`):
    /// its history (after `last_event_id`, when given), then its live
    /// events, ending after the terminal one (`job.succeeded`,
    /// `job.failed` or `job.canceled`).
    ///
    /// A dropped connection, or a `stream.overflow` the server sends to a
    /// reader that fell behind, is resumed with `Last-Event-ID`: no event is
    /// skipped or repeated. Connections that keep failing (five in a row,
    /// with a short backoff) end the stream with the last error. A stream
    /// resumed at or after its terminal event is empty (the server answers
    /// 204). An unknown job is [`Error::Api`] with status 404; a server that
    /// does not stream answers an error too (404, 405, 501, or
    /// [`Error::Stream`] for a body that is not `text/event-stream`).
    /// [`Client::wait`] falls back to polling in those cases.
    ///
    /// ```no_run
    /// # async fn demo(client: replyd_client::Client, id: &str) -> replyd_client::Result<()> {
    /// use futures::StreamExt;
    /// let mut events = std::pin::pin!(client.events(id, None));
    /// while let Some(event) = events.next().await {
    ///     let event = event?;
    ///     println!("{} {} {:?}", event.id, event.event, event.job.progress);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn events(
        &self,
        id: &str,
        last_event_id: Option<u64>,
    ) -> impl Stream<Item = Result<JobEvent>> + Send + 'static {
        let follower = Follower::new(self.clone(), id, last_event_id);
        futures::stream::unfold(Some(follower), |follower| async move {
            let mut follower = follower?;
            match follower.next().await {
                Ok(Step::Event(event)) => Some((Ok(*event), Some(follower))),
                Ok(Step::End | Step::NoContent) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(9), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn what_is_retried() {
        let retried = |status: u16| retryable(StatusCode::from_u16(status).unwrap());
        assert!(retried(503));
        assert!(retried(502));
        assert!(retried(429));
        assert!(!retried(404));
        assert!(!retried(405));
        assert!(!retried(501));
        assert!(!retried(401));
    }

    #[test]
    fn frames_become_events() {
        let data = String::from_utf8(crate::tests::job_json("running", Some(40))).unwrap();
        let frame = eventsource_stream::Event {
            event: "job.progress".into(),
            data,
            id: "17".into(),
            retry: None,
        };
        let event = parse_event(frame.clone()).unwrap();
        assert_eq!(event.id, 17);
        assert_eq!(event.event, "job.progress");
        assert_eq!(event.job.progress.as_ref().unwrap().percent, Some(40.0));
        assert!(
            !JobEvent {
                id: 1,
                event: "x".into(),
                job: event.job
            }
            .is_terminal()
        );
        let bad_id = eventsource_stream::Event {
            id: "x".into(),
            ..frame.clone()
        };
        assert!(matches!(parse_event(bad_id), Err(Error::Stream(_))));
        let bad_data = eventsource_stream::Event {
            data: "{}".into(),
            ..frame
        };
        assert!(matches!(parse_event(bad_data), Err(Error::Decode { .. })));
    }
}
