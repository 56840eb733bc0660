"""Following one job's Server-Sent Events (API.md §3), without I/O.

``GET /v1/jobs/{id}/events`` replays the job's history, then its live
events, and closes after the terminal one. :class:`EventCursor` holds what
a follower must remember across connections: the last event id (sent as
``Last-Event-ID``, so a reconnect resumes exactly after it), the server's
``retry:`` (the pause before reconnecting), and how many connections in a
row failed. It never hands out an event id twice. ``Client`` and
``AsyncClient`` open the connections and feed it what arrives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Optional

from httpx_sse import ServerSentEvent

from ._errors import ProblemError, StreamError
from ._models import Job

#: Consecutive failed or broken connections (without a job event between
#: them) after which following the stream is given up.
MAX_FAILURES = 6
#: The pause before reconnecting when the server has not sent ``retry:``.
DEFAULT_RETRY = 1.0
#: The longest pause between two connection attempts.
MAX_RECONNECT_PAUSE = 10.0
#: A stream with no bytes for this long is taken as dead and resumed (the
#: server sends a keep-alive comment every 15 s by default).
IDLE_TIMEOUT = 45.0
#: Statuses of the events endpoint that are worth another try.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class JobEvent:
    """One event of a job: what happened, and the job right after it."""

    id: int
    """The event id; ``events(id, after=this)`` resumes right after it."""
    event: str
    """``job.accepted``, ``job.started``, ``job.progress``, ``job.retrying``,
    ``job.cancel_requested``, ``job.output``, ``job.succeeded``,
    ``job.failed`` or ``job.canceled``."""
    job: Job
    """The job's representation after the event."""

    @property
    def is_terminal(self) -> bool:
        """Whether this is the job's last event (the stream ends after it)."""
        return self.job.is_terminal


class Reconnect(Exception):
    """The connection is to be dropped and opened again (after a pause)."""


class EventCursor:
    """Where a follower of one job's stream is, across connections."""

    def __init__(self, after: Optional[int] = None) -> None:
        self.last_id: Optional[int] = after
        """The id of the last event handed out (sent as ``Last-Event-ID``)."""
        self.retry = DEFAULT_RETRY
        """The server's reconnection time (``retry:``), in seconds."""
        self.failures = 0
        """Failed or broken connections since the last job event."""
        self.reconnects = 0
        """Connections opened to resume after a broken one."""
        self.done = False
        """The terminal event was handed out, or the server said 204."""
        self._connected_before = False
        self.last_error: Optional[Exception] = None

    def headers(self) -> Dict[str, str]:
        """The request headers of the next connection."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        return headers

    def opened(self, status: int, content_type: str, error: Optional[ProblemError]) -> bool:
        """Takes a connection's status; True when its body is the stream.

        False for ``204 No Content`` (the stream ended at or before
        ``Last-Event-ID``: nothing more will come). Raises
        :class:`Reconnect` for answers worth another try, ``error`` (the
        answer's problem) for refusals, and :class:`StreamError` for an
        answer that is not an event stream.
        """
        if status == 204:
            self.done = True
            return False
        if status != 200:
            if error is None:  # pragma: no cover - the caller builds one for >= 400
                raise StreamError(f"the events endpoint answered {status}")
            if status in RETRYABLE_STATUSES:
                if error.retry_after is not None:
                    self.retry = max(self.retry, min(error.retry_after, MAX_RECONNECT_PAUSE))
                self.broke(error)
                raise Reconnect()
            self.done = True
            raise error
        essence = content_type.split(";", 1)[0].strip().lower()
        if essence != "text/event-stream":
            self.done = True
            raise StreamError(
                f"the events endpoint answered {content_type or 'no content type'!r}, "
                "not text/event-stream"
            )
        if self._connected_before:
            self.reconnects += 1
        self._connected_before = True
        return True

    def feed(self, sse: ServerSentEvent) -> Optional[JobEvent]:
        """Takes one dispatched event; returns it when it is a new job event."""
        if sse.retry is not None and sse.retry >= 0:
            self.retry = sse.retry / 1000.0
        if sse.event == "stream.overflow":
            # The server dropped this reader for falling behind: resume.
            self.broke(StreamError("the server dropped the stream: this reader fell behind"))
            raise Reconnect()
        if not sse.event.startswith("job."):
            # stream.reset, the retry-only message, names this SDK does not know.
            return None
        try:
            event_id = int(sse.id.strip())
        except ValueError:
            self.done = True
            raise StreamError(f"event {sse.event} has no usable id ({sse.id!r})") from None
        try:
            job = Job.from_json(json.loads(sse.data))
        except (ValueError, TypeError) as e:
            self.done = True
            raise StreamError(f"event {event_id} ({sse.event}) is malformed: {e}") from None
        if self.last_id is not None and event_id <= self.last_id:
            return None
        self.last_id = event_id
        self.failures = 0
        event = JobEvent(event_id, sse.event, job)
        if event.is_terminal:
            self.done = True
        return event

    def ended(self) -> None:
        """The connection closed before the terminal event."""
        if not self.done:
            self.broke(StreamError("the stream closed before the job finished"))

    def broke(self, error: Exception) -> None:
        """Counts a failed or broken connection; raises :class:`StreamError`
        (caused by ``error``) after :data:`MAX_FAILURES` in a row."""
        self.failures += 1
        self.last_error = error
        if self.failures >= MAX_FAILURES:
            self.done = True
            raise StreamError(
                f"the event stream failed {self.failures} times in a row: {error}"
            ) from error

    def pause(self) -> float:
        """Seconds to wait before the next connection: the server's
        ``retry:`` after one failure, doubling with each further one."""
        if self.failures == 0:
            return 0.0
        return min(max(self.retry, MAX_RECONNECT_PAUSE), self.retry * 2.0 ** (self.failures - 1))
