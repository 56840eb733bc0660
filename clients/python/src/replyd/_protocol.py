"""The wire protocol, without I/O: what to send and how to read the answer.

Each API call is a :class:`Call`: the route, the request's parts, and a
``parse`` function from the :class:`Answer` to the value the SDK returns
(raising :class:`~replyd.ProblemError` for an error answer). ``Client``
and ``AsyncClient`` only send calls and sleep, so both behave alike by
construction; the retry policy and the polling plan are here too.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, Tuple, TypeVar, Union

import httpx

from . import _tracing
from ._errors import (
    ConflictError,
    ProblemError,
    UnexpectedResponseError,
    problem_error,
)
from ._models import (
    CompleteRequest,
    FailReasonDetail,
    FailRequest,
    HeartbeatRequest,
    Job,
    JobList,
    Lease,
    LeaseBatch,
    LeaseRequest,
    LeaseStatus,
    ProgressRequest,
    SubmitRequest,
    WebhookSpec,
)
from ._result import JobResult
from ._routes import ROUTES, path

T = TypeVar("T")

#: Extra time a held request (``Prefer: wait``, a lease's ``wait``) may
#: take beyond what the server was asked to hold it for.
HOLD_GRACE = 30.0
#: How long one long poll asks the server to hold (``Prefer: wait=N``, N <= 60).
LONG_POLL = 30.0
#: Bounds of the pause between two polls, whatever ``Retry-After`` says.
MIN_POLL_PAUSE = 0.1
MAX_POLL_PAUSE = 30.0
#: The pause between polls when the server gives no ``Retry-After``.
DEFAULT_POLL_PAUSE = 1.0
#: The header a raw completion names its lease in.
LEASE_ID_HEADER = "Replyd-Lease-Id"


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, read whole."""

    status: int
    headers: httpx.Headers
    body: bytes


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request to replyd and how to read its answer."""

    route: str
    """The key of :data:`~replyd._routes.ROUTES` this call uses."""
    path: str
    """The path, parameters filled in."""
    parse: Callable[[Answer], T]
    params: Optional[Dict[str, str]] = None
    headers: Dict[str, str] = field(default_factory=dict)
    json: Any = None
    has_json: bool = False
    content: Optional[bytes] = None
    hold: float = 0.0
    """Seconds the server may hold the request before answering; the read
    timeout is extended by this much (plus :data:`HOLD_GRACE`)."""

    @property
    def method(self) -> str:
        """The HTTP method."""
        return ROUTES[self.route].method

    @property
    def idempotent(self) -> bool:
        """Whether resending after a broken connection is harmless."""
        return ROUTES[self.route].idempotent


# ---- reading answers ---------------------------------------------------


def retry_after(headers: Mapping[str, str], now: Optional[float] = None) -> Optional[float]:
    """``Retry-After`` in seconds: delay-seconds (a decimal is tolerated) or
    an HTTP-date; None when absent or unreadable."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            at = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        return max(0.0, at - (time.time() if now is None else now))
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return None
    return seconds


def error_for(answer: Answer) -> Exception:
    """The exception for an answer the call does not accept."""
    if answer.status >= 400:
        return problem_error(
            answer.status, answer.headers, answer.body, retry_after(answer.headers)
        )
    text = answer.body[:512].decode("utf-8", errors="replace")
    return UnexpectedResponseError(
        f"unexpected answer from replyd ({answer.status}): {text}",
        status=answer.status,
        body=answer.body[:65536],
    )


def _expect(answer: Answer, *statuses: int) -> None:
    if answer.status not in statuses:
        raise error_for(answer)


def _json(answer: Answer) -> Any:
    try:
        return json.loads(answer.body)
    except ValueError as e:
        raise UnexpectedResponseError(
            f"replyd's {answer.status} answer is not JSON: {e}",
            status=answer.status,
            body=answer.body[:65536],
        ) from None


def _decode(answer: Answer, reader: Callable[[Mapping[str, Any]], T]) -> T:
    data = _json(answer)
    if not isinstance(data, dict):
        raise UnexpectedResponseError(
            f"replyd's {answer.status} answer is not a JSON object",
            status=answer.status,
            body=answer.body[:65536],
        )
    try:
        return reader(data)
    except (ValueError, TypeError) as e:
        raise UnexpectedResponseError(
            f"replyd's {answer.status} answer does not match the API: {e}",
            status=answer.status,
            body=answer.body[:65536],
        ) from None


def _job(answer: Answer) -> Job:
    return _decode(answer, Job.from_json)


def job_id_from_location(location: str) -> Optional[str]:
    """The job id in a ``Location`` such as ``/v1/jobs/ID/result?access_token=…``."""
    before_query = location.split("?", 1)[0].split("#", 1)[0]
    _, found, rest = before_query.partition("/v1/jobs/")
    job_id = rest.split("/", 1)[0]
    return job_id if found and job_id else None


def _result(answer: Answer) -> JobResult:
    if not 200 <= answer.status < 300:
        raise error_for(answer)
    content_type = answer.headers.get("content-type", "application/octet-stream")
    return JobResult(content_type=content_type, body=answer.body, status=answer.status)


# ---- the client side ----------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """A submit answered with the result itself (``Prefer: wait``)."""

    job_id: str
    result: JobResult


def submit(
    queue: str,
    input: Any,
    *,
    webhook: Union[None, str, WebhookSpec],
    max_attempts: Optional[int],
    timeout: Optional[float],
    ttl: Optional[float],
    idempotency_key: Optional[str],
    wait: Optional[float],
    traceparent: Optional[str],
    tracestate: Optional[str],
    extra: Mapping[str, Any],
) -> Call[Union[Job, Finished]]:
    """``POST /v1/jobs``. ``extra`` members go into the body as they are."""
    body: SubmitRequest = {"queue": queue, "input": input}
    if webhook is not None:
        body["webhook"] = {"url": webhook} if isinstance(webhook, str) else webhook
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    if timeout is not None:
        body["timeout"] = timeout
    if ttl is not None:
        body["ttl"] = ttl
    document: Dict[str, Any] = dict(body)
    document.update(extra)
    headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    hold = 0.0
    if wait is not None:
        seconds = max(0, int(wait))
        headers["Prefer"] = f"wait={seconds}"
        hold = float(seconds)
    if traceparent is not None:
        headers["traceparent"] = traceparent
        if tracestate is not None:
            headers["tracestate"] = tracestate
    else:
        headers.update(_tracing.current_headers())

    def parse(answer: Answer) -> Union[Job, Finished]:
        if answer.status == 202 or (answer.status == 200 and wait is None):
            return _job(answer)
        if 200 <= answer.status < 300:
            # The result itself; Content-Location names the job.
            location = answer.headers.get("content-location", "")
            job_id = job_id_from_location(location)
            if job_id is None:
                raise UnexpectedResponseError(
                    "a result answer to submit without a Content-Location naming the job",
                    status=answer.status,
                    body=answer.body[:65536],
                )
            return Finished(job_id, _result(answer))
        raise error_for(answer)

    return Call(
        "submit", path("submit"), parse, headers=headers, json=document, has_json=True, hold=hold
    )


def get(job_id: str) -> Call[Job]:
    """``GET /v1/jobs/{id}``: 202 pending, 303 succeeded, 200 failed or canceled."""

    def parse(answer: Answer) -> Job:
        _expect(answer, 200, 202, 303)
        return _job(answer)

    return Call("get", path("get", id=job_id), parse)


@dataclass(frozen=True)
class Polled:
    """A job as one poll found it, with what the answer's headers add."""

    job: Job
    etag: Optional[str]
    retry_after: Optional[float]


def poll(
    job_id: str, etag: Optional[str], hold: float, link: Optional[str] = None
) -> Call[Optional[Polled]]:
    """``GET /v1/jobs/{id}`` (or the job's own ``links.self``, which carries
    its token), with ``If-None-Match`` and ``Prefer: wait`` (long polling)
    when an ETag is known. None: unchanged (304)."""
    headers: Dict[str, str] = {}
    seconds = 0
    if etag is not None:
        headers["If-None-Match"] = etag
        seconds = max(1, min(60, int(hold)))
        headers["Prefer"] = f"wait={seconds}"

    def parse(answer: Answer) -> Optional[Polled]:
        if answer.status == 304:
            return None
        _expect(answer, 200, 202, 303)
        return Polled(_job(answer), answer.headers.get("etag"), retry_after(answer.headers))

    where = link if link is not None else path("get", id=job_id)
    return Call("get", where, parse, headers=headers, hold=float(seconds))


def result(job_id: str) -> Call[JobResult]:
    """``GET /v1/jobs/{id}/result``: 409 unfinished, 410 expired."""
    return Call("result", path("result", id=job_id), _result)


def cancel(job_id: str) -> Call[Job]:
    """``POST /v1/jobs/{id}/cancel``: 200 canceled, 202 requested, 409 finished."""

    def parse(answer: Answer) -> Job:
        _expect(answer, 200, 202)
        return _job(answer)

    return Call("cancel", path("cancel", id=job_id), parse)


def delete(job_id: str) -> Call[None]:
    """``DELETE /v1/jobs/{id}``: a finished job and its result."""

    def parse(answer: Answer) -> None:
        if not 200 <= answer.status < 300:
            raise error_for(answer)

    return Call("delete", path("delete", id=job_id), parse)


def list_jobs(
    queue: Optional[str], state: Optional[str], limit: Optional[int], cursor: Optional[str]
) -> Call[JobList]:
    """``GET /v1/jobs``: one page, newest first."""
    params = {
        k: str(v)
        for k, v in (("queue", queue), ("state", state), ("limit", limit), ("cursor", cursor))
        if v is not None
    }

    def parse(answer: Answer) -> JobList:
        _expect(answer, 200)
        return _decode(answer, JobList.from_json)

    return Call("list", path("list"), parse, params=params or None)


def jwks() -> Call[Dict[str, Any]]:
    """``GET /.well-known/jwks.json``: the keys of webhook JWTs."""

    def parse(answer: Answer) -> Dict[str, Any]:
        _expect(answer, 200)
        return _decode(answer, dict)

    return Call("jwks", path("jwks"), parse)


# ---- the worker side ------------------------------------------------------


def lease(
    queue: str,
    *,
    batch: int,
    worker: Optional[str],
    lease_seconds: Optional[float],
    wait: Optional[float],
) -> Call[List[Lease]]:
    """``POST /v1/queues/{queue}/lease`` with a ``batch`` size: up to that
    many leases (none when nothing came within ``wait``)."""
    body: LeaseRequest = {"batch": batch}
    if worker is not None:
        body["worker"] = worker
    if lease_seconds is not None:
        body["lease"] = lease_seconds
    if wait is not None:
        body["wait"] = wait

    def parse(answer: Answer) -> List[Lease]:
        if answer.status == 204:
            return []
        _expect(answer, 200)
        data = _json(answer)
        if isinstance(data, dict) and "leases" not in data and "lease_id" in data:
            return [_decode(answer, Lease.from_json)]
        return _decode(answer, LeaseBatch.from_json).leases

    return Call(
        "lease",
        path("lease", queue=queue),
        parse,
        json=body,
        has_json=True,
        hold=max(0.0, wait or 0.0),
    )


def _lease_status(answer: Answer) -> LeaseStatus:
    _expect(answer, 200)
    return _decode(answer, LeaseStatus.from_json)


def heartbeat(job_id: str, lease_id: str, lease_seconds: Optional[float]) -> Call[LeaseStatus]:
    """``POST /v1/jobs/{id}/heartbeat``: renews the lease; says whether a
    cancel was requested. A lost lease is 409."""
    body: HeartbeatRequest = {"lease_id": lease_id}
    if lease_seconds is not None:
        body["lease"] = lease_seconds
    return Call(
        "heartbeat", path("heartbeat", id=job_id), _lease_status, json=body, has_json=True
    )


def progress(
    job_id: str, lease_id: str, percent: Optional[float], message: Optional[str]
) -> Call[LeaseStatus]:
    """``POST /v1/jobs/{id}/progress`` (it renews the lease too)."""
    body: ProgressRequest = {"lease_id": lease_id}
    if percent is not None:
        body["percent"] = float(percent)
    if message is not None:
        body["message"] = message
    return Call("progress", path("progress", id=job_id), _lease_status, json=body, has_json=True)


def _ok_job(answer: Answer) -> Job:
    _expect(answer, 200)
    return _job(answer)


def complete(job_id: str, lease_id: str, value: Any) -> Call[Job]:
    """``POST /v1/jobs/{id}/complete``: a :class:`JobResult` or ``bytes`` is
    sent raw with its content type (``application/octet-stream`` for bare
    bytes); anything else as the JSON ``result``."""
    route = path("complete", id=job_id)
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = JobResult("application/octet-stream", bytes(value))
    if isinstance(value, JobResult):
        headers = {"Content-Type": value.content_type, LEASE_ID_HEADER: lease_id}
        return Call("complete", route, _ok_job, headers=headers, content=value.body)
    body: CompleteRequest = {"lease_id": lease_id, "result": value}
    return Call("complete", route, _ok_job, json=body, has_json=True)


def fail(
    job_id: str, lease_id: str, message: str, *, code: Optional[str], retry: bool
) -> Call[Job]:
    """``POST /v1/jobs/{id}/fail``; ``retry`` asks for another attempt."""
    reason: FailReasonDetail = {"message": message}
    if code is not None:
        reason["code"] = code
    body: FailRequest = {"lease_id": lease_id, "error": reason, "retry": retry}
    return Call("fail", path("fail", id=job_id), _ok_job, json=body, has_json=True)


# ---- retrying ------------------------------------------------------------

#: Answers worth asking again for: the server is overloaded or unavailable.
RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """When a call is sent again.

    An answer ``429`` or ``503`` is retried after its ``Retry-After`` (or a
    short exponential backoff with jitter when it gives none), at most
    ``max_retries`` times, and only while ``Retry-After`` is at most
    ``max_retry_after`` seconds: a longer one is raised at once, its
    ``retry_after`` set. A connection that could not be opened is retried
    for any call; one that broke after the request went out, only for
    calls that are safe to repeat (reads, heartbeats, progress, and submit,
    whose ``Idempotency-Key`` makes a repeat return the same job).
    """

    max_retries: int = 3
    """Attempts after the first; 0 turns retrying off."""
    max_retry_after: float = 30.0
    """The longest ``Retry-After`` (seconds) waited for."""
    backoff: float = 0.25
    """The first pause (seconds) when the server gives no ``Retry-After``; it doubles."""
    max_backoff: float = 5.0
    """The longest such pause."""

    def _backoff(self, attempt: int) -> float:
        pause = min(self.max_backoff, self.backoff * 2.0 ** max(0, attempt - 1))
        return pause * random.uniform(0.5, 1.0)

    def after_answer(self, call: Call[Any], attempt: int, error: Exception) -> Optional[float]:
        """Seconds to wait before sending ``call`` again after ``error``
        (the parse of attempt number ``attempt``, from 1); None: raise it."""
        if attempt > self.max_retries or not isinstance(error, ProblemError):
            return None
        if error.status in RETRY_STATUSES:
            if error.retry_after is None:
                return self._backoff(attempt)
            return error.retry_after if error.retry_after <= self.max_retry_after else None
        if isinstance(error, ConflictError) and call.route == "submit" and attempt > 1:
            # Our own earlier attempt is still being accepted (its answer
            # was lost): the same key answers the job once it is durable.
            return self._backoff(attempt)
        return None

    def after_transport_error(
        self, call: Call[Any], attempt: int, error: httpx.TransportError
    ) -> Optional[float]:
        """Seconds to wait before sending ``call`` again after ``error``; None: raise."""
        if attempt > self.max_retries:
            return None
        never_sent = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        if never_sent or call.idempotent:
            return self._backoff(attempt)
        return None


# ---- polling -------------------------------------------------------------


def poll_pause(retry_after_seconds: Optional[float]) -> float:
    """The pause before polling again, as the server's ``Retry-After`` says."""
    pause = DEFAULT_POLL_PAUSE if retry_after_seconds is None else retry_after_seconds
    return min(MAX_POLL_PAUSE, max(MIN_POLL_PAUSE, pause))


class PollPlan:
    """Polls one job until it finishes: long polls (``If-None-Match`` and
    ``Prefer: wait``) while the server gives an ETag, pausing as its
    ``Retry-After`` says whenever it answers without holding the request."""

    def __init__(self, job_id: str, deadline: Optional[float], link: Optional[str] = None) -> None:
        self.job_id = job_id
        self.link = link
        self.deadline = deadline
        self.last: Optional[Polled] = None
        self._pause_next = False
        self._sent_at = 0.0
        self._hold = 0.0

    def remaining(self) -> Optional[float]:
        """Seconds left before the deadline (None: no deadline)."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()

    def next(self) -> Tuple[float, Call[Optional[Polled]]]:
        """(seconds to sleep first, the call to send)."""
        left = self.remaining()
        pause = 0.0
        if self.last is not None and (self._pause_next or self.last.etag is None):
            pause = poll_pause(self.last.retry_after)
        if left is not None:
            pause = min(pause, max(0.0, left))
        hold = LONG_POLL if left is None else max(1.0, min(LONG_POLL, left - pause))
        etag = self.last.etag if self.last is not None else None
        self._hold = hold if etag is not None else 0.0
        self._sent_at = time.monotonic() + pause
        return pause, poll(self.job_id, etag, hold, self.link)

    def update(self, polled: Optional[Polled]) -> Optional[Job]:
        """Takes the answer to the last call; returns the job when it changed."""
        held = time.monotonic() - self._sent_at + 1.0 >= self._hold > 0
        previous = self.last
        if polled is None:
            self._pause_next = not held
            return None
        if previous is not None and polled.etag == previous.etag and polled.job == previous.job:
            self.last = Polled(previous.job, previous.etag, polled.retry_after)
            self._pause_next = not held
            return None
        self.last = polled
        self._pause_next = False
        return polled.job
