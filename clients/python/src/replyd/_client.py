"""The synchronous client. :class:`~replyd.AsyncClient` has the same surface."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, TypeVar, Union

import httpx
from httpx_sse import EventSource

from . import _protocol as proto
from ._base import DEFAULT_URL, BaseClient, job_id_of
from ._errors import ProblemError, StreamError, TransportError, WaitTimeoutError, problem_error
from ._events import EventCursor, JobEvent, Reconnect
from ._models import Job, JobList, Lease, LeaseStatus, WebhookSpec
from ._protocol import Answer, Call, Finished, RetryPolicy
from ._result import JobResult

log = logging.getLogger("replyd")

T = TypeVar("T")


class _DeadlinePassed(Exception):
    """Internal: the caller's deadline passed while following events."""


class _Watchdog:
    """Shuts a streamed response's socket down at a deadline, so that a
    blocking read returns then (keep-alive comments would keep a read
    timeout from ever firing). Without access to the socket (a custom
    transport), the read timeout alone bounds the wait."""

    def __init__(self, response: httpx.Response, deadline: Optional[float]) -> None:
        self._timer: Optional[threading.Timer] = None
        if deadline is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), _shutdown, (sock,))
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class AbortHandle:
    """Lets another thread (or a signal handler) abort one request by
    shutting its connection down. It learns the socket from httpcore's
    ``trace`` extension when the connection is opened, so the request
    must use a fresh connection (see ``Client._lease_abortable``)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._sock: Optional[socket.socket] = None
        self.aborted = False

    def trace(self, name: str, info: Dict[str, Any]) -> None:
        if name != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with self._lock:
                self._sock = sock
                if self.aborted:
                    _shutdown(sock)

    def abort(self) -> None:
        """Shuts the request's connection down (now, or once it is open)."""
        with self._lock:
            self.aborted = True
            if self._sock is not None:
                _shutdown(self._sock)


class Client(BaseClient):
    """A synchronous connection to one replyd server (thread-safe).

    ``api_key`` is sent as ``Authorization: Bearer``; ``timeout`` bounds
    each request (held requests, such as ``Prefer: wait`` and lease long
    polls, get their hold on top); ``retry`` says when a call is sent again
    (see :class:`RetryPolicy`). Pass ``http_client`` to use your own
    ``httpx.Client`` (proxies, TLS); it must not follow redirects.

    >>> with Client("http://127.0.0.1:8202") as client:      # doctest: +SKIP
    ...     job = client.submit("report", {"month": "2024-05"})
    ...     done = client.wait(job, timeout=60)
    ...     print(client.result(done).value)
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: Optional[str] = None,
        *,
        timeout: float = 30.0,
        retry: Optional[RetryPolicy] = None,
        headers: Optional[Dict[str, str]] = None,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retry, headers)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(follow_redirects=False)
        self._lease_http: Optional[httpx.Client] = None

    def close(self) -> None:
        """Closes the connections (not a client passed in as ``http_client``)."""
        if self._owns_http:
            self._http.close()
        if self._lease_http is not None:
            self._lease_http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- sending -----------------------------------------------------
    def _send(self, call: Call[Any]) -> Answer:
        response = self._http.request(call.method, self._url(call.path), **self._request_args(call))
        return Answer(response.status_code, response.headers, response.content)

    def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = self._send(call)
            except httpx.TransportError as e:
                pause = self.retry.after_transport_error(call, attempt, e)
                if pause is None:
                    raise TransportError(f"{call.method} {call.path}: {e!r}") from e
            else:
                try:
                    return call.parse(answer)
                except ProblemError as e:
                    pause = self.retry.after_answer(call, attempt, e)
                    if pause is None:
                        raise
            log.debug("retrying %s %s in %.2fs", call.method, call.path, pause)
            time.sleep(pause)

    # ---- the client side ---------------------------------------------
    def submit(
        self,
        queue: str,
        input: Any = None,
        *,
        webhook: Union[None, str, WebhookSpec] = None,
        max_attempts: Optional[int] = None,
        timeout: Optional[float] = None,
        ttl: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        wait: Optional[float] = None,
        traceparent: Optional[str] = None,
        tracestate: Optional[str] = None,
        **extra: Any,
    ) -> Job:
        """Submits a job to ``queue`` (``POST /v1/jobs``) and returns it.

        ``webhook`` is a URL or ``{"url", "events", "jwt"}``; ``timeout``
        (seconds one attempt may take), ``ttl`` (seconds the finished job is
        kept) and ``max_attempts`` override the queue's; ``extra`` members
        (e.g. ``output={"content_type": "text/plain"}``) go into the body as
        they are. The ``Idempotency-Key`` is a fresh UUID unless given: the
        same key with the same body returns the same job, which is what
        makes retrying a submit safe; with another body it is
        :class:`UnprocessableEntityError`.

        With ``wait=N`` the server holds the request up to N seconds
        (``Prefer: wait``): if the job succeeds by then, the returned job is
        finished and carries its result in ``Job.result`` (the job is read
        once more for its representation, so with ``ttl=0`` it is already
        gone: :class:`GoneError`).

        ``traceparent``/``tracestate`` (W3C Trace Context) link the job to
        a trace; by default the current OpenTelemetry span's are sent, when
        OpenTelemetry is installed.
        """
        call = proto.submit(
            queue,
            input,
            webhook=webhook,
            max_attempts=max_attempts,
            timeout=timeout,
            ttl=ttl,
            idempotency_key=idempotency_key,
            wait=wait,
            traceparent=traceparent,
            tracestate=tracestate,
            extra=extra,
        )
        answer = self._run(call)
        if isinstance(answer, Finished):
            job = self._run(proto.get(answer.job_id))
            return dataclasses.replace(job, result=answer.result)
        return answer

    def get(self, job: Union[str, Job]) -> Job:
        """The job as it is now (``GET /v1/jobs/{id}``). Unknown (or another
        tenant's): :class:`NotFoundError`; expired: :class:`GoneError`."""
        return self._run(proto.get(job_id_of(job)))

    def result(self, job: Union[str, Job]) -> JobResult:
        """The result of a succeeded job: its bytes and content type
        (``.value`` decodes JSON). Unfinished, failed or canceled:
        :class:`ConflictError`; expired: :class:`GoneError`."""
        return self._run(proto.result(job_id_of(job)))

    def cancel(self, job: Union[str, Job]) -> Job:
        """Cancels a queued job at once, or asks a running job's worker to
        stop (it is still running when this returns; ``cancel_requested``
        is set). Finished: :class:`ConflictError`."""
        return self._run(proto.cancel(job_id_of(job)))

    def delete(self, job: Union[str, Job]) -> None:
        """Removes a finished job and its result. Unfinished: :class:`ConflictError`."""
        self._run(proto.delete(job_id_of(job)))

    def list(
        self,
        *,
        queue: Optional[str] = None,
        state: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> JobList:
        """One page of the caller's jobs, newest first (``GET /v1/jobs``).
        Pass the page's ``next_cursor`` as ``cursor`` for the next one; a
        filtered page may come back short, even empty, with a cursor."""
        return self._run(proto.list_jobs(queue, state, limit, cursor))

    def list_all(
        self,
        *,
        queue: Optional[str] = None,
        state: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> Iterator[Job]:
        """Every job :meth:`list` would give, page after page, lazily."""
        cursor: Optional[str] = None
        while True:
            page = self.list(queue=queue, state=state, limit=page_size, cursor=cursor)
            yield from page.jobs
            if not page.next_cursor or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    # ---- following a job ---------------------------------------------
    def events(self, job: Union[str, Job], after: Optional[int] = None) -> Iterator[JobEvent]:
        """The job's events (Server-Sent Events): its history after event
        ``after`` (all of it by default), then live ones, ending after the
        terminal event.

        A dropped connection is resumed with ``Last-Event-ID`` after the
        server's ``retry:`` pause: no event is skipped or repeated. Six
        failed connections in a row end it with :class:`StreamError`, as
        does an endpoint that does not answer an event stream.
        """
        _, url, _ = self._targets(job)
        yield from self._follow(url, EventCursor(after), None)

    def wait(self, job: Union[str, Job], timeout: Optional[float] = None) -> Job:
        """Waits until the job has finished and returns it (succeeded,
        failed or canceled: check ``job.state``).

        Follows the job's event stream, resuming after dropped connections;
        where the server does not stream (a proxy answering something else,
        a stream that keeps failing) it polls ``GET /v1/jobs/{id}`` instead,
        long polling with its ETag and pausing as ``Retry-After`` says.
        After ``timeout`` seconds: :class:`WaitTimeoutError` (``.job`` is
        the job as last seen).
        """
        job_id, url, link = self._targets(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: Optional[Job] = None
        try:
            for event in self._follow(url, EventCursor(), deadline):
                seen = event.job
                if event.is_terminal:
                    return event.job
        except _DeadlinePassed:
            raise WaitTimeoutError(f"job {job_id} did not finish within {timeout} s", seen) from None
        except (StreamError, ProblemError) as e:
            log.info("job %s: events unavailable (%s); polling instead", job_id, e)
        return self._poll(job_id, link, deadline, seen, timeout)

    def _poll(
        self,
        job_id: str,
        link: Optional[str],
        deadline: Optional[float],
        seen: Optional[Job],
        timeout: Optional[float],
    ) -> Job:
        plan = proto.PollPlan(job_id, deadline, link)
        while True:
            pause, call = plan.next()
            if pause > 0:
                time.sleep(pause)
            left = plan.remaining()
            if left is not None and left <= 0:
                last = plan.last.job if plan.last is not None else seen
                raise WaitTimeoutError(f"job {job_id} did not finish within {timeout} s", last)
            changed = plan.update(self._run(call))
            if changed is not None and changed.is_terminal:
                return changed

    def _follow(
        self, url: str, cursor: EventCursor, deadline: Optional[float]
    ) -> Iterator[JobEvent]:
        while not cursor.done:
            pause = cursor.pause()
            if deadline is not None and time.monotonic() + pause >= deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                raise _DeadlinePassed()
            if pause > 0:
                time.sleep(pause)
            try:
                with self._http.stream(
                    "GET",
                    url,
                    headers=self._request_headers(cursor.headers()),
                    timeout=self._stream_timeout(deadline),
                ) as response:
                    error = None
                    if response.status_code >= 400:
                        response.read()
                        error = problem_error(
                            response.status_code,
                            response.headers,
                            response.content,
                            proto.retry_after(response.headers),
                        )
                    try:
                        streaming = cursor.opened(
                            response.status_code, response.headers.get("content-type", ""), error
                        )
                    except Reconnect:
                        continue
                    if not streaming:
                        return
                    watchdog = _Watchdog(response, deadline)
                    try:
                        for sse in EventSource(response).iter_sse():
                            try:
                                event = cursor.feed(sse)
                            except Reconnect:
                                break
                            if event is not None:
                                yield event
                            if cursor.done:
                                return
                        else:
                            if deadline is not None and time.monotonic() >= deadline:
                                raise _DeadlinePassed()
                            cursor.ended()
                    finally:
                        watchdog.cancel()
            except httpx.TransportError as e:
                if deadline is not None and time.monotonic() >= deadline:
                    raise _DeadlinePassed() from None
                cursor.broke(e)

    # ---- the worker side ---------------------------------------------
    def lease(
        self,
        queue: str,
        *,
        worker: Optional[str] = None,
        lease_seconds: Optional[float] = None,
        wait: Optional[float] = None,
    ) -> Optional[Lease]:
        """Leases the oldest ready job of ``queue``; None when none came
        within ``wait`` seconds (a long poll, at most 60). A client key:
        :class:`PermissionDeniedError`; a queue that is not a pull queue:
        :class:`ConflictError`."""
        leases = self.lease_batch(queue, 1, worker=worker, lease_seconds=lease_seconds, wait=wait)
        return leases[0] if leases else None

    def lease_batch(
        self,
        queue: str,
        batch: int,
        *,
        worker: Optional[str] = None,
        lease_seconds: Optional[float] = None,
        wait: Optional[float] = None,
    ) -> List[Lease]:
        """Leases up to ``batch`` (1-100) jobs of ``queue`` at once."""
        return self._run(
            proto.lease(queue, batch=batch, worker=worker, lease_seconds=lease_seconds, wait=wait)
        )

    def _lease_abortable(
        self,
        queue: str,
        batch: int,
        abort: AbortHandle,
        *,
        worker: Optional[str],
        lease_seconds: Optional[float],
        wait: Optional[float],
    ) -> List[Lease]:
        """:meth:`lease_batch` once (no retries), abortable from another
        thread through ``abort``: replyd leases nothing to a request whose
        connection is gone. Each call opens a connection of its own (from a
        pool without keep-alive) so that its socket is known; with an
        ``http_client`` of the caller's, the request may reuse one and then
        cannot be aborted (it ends after ``wait``)."""
        if self._owns_http and self._lease_http is None:
            no_reuse = httpx.Limits(max_keepalive_connections=0)
            self._lease_http = httpx.Client(follow_redirects=False, limits=no_reuse)
        http = self._lease_http if self._lease_http is not None else self._http
        call = proto.lease(queue, batch=batch, worker=worker, lease_seconds=lease_seconds, wait=wait)
        args = self._request_args(call)
        args["extensions"] = {"trace": abort.trace}
        try:
            response = http.request(call.method, self._url(call.path), **args)
        except httpx.TransportError as e:
            raise TransportError(f"{call.method} {call.path}: {e!r}") from e
        return call.parse(Answer(response.status_code, response.headers, response.content))

    def heartbeat(
        self, job: Union[str, Job], lease_id: str, lease_seconds: Optional[float] = None
    ) -> LeaseStatus:
        """Renews a lease (by ``lease_seconds``, or its own length) and says
        whether a cancel was requested. A lost lease: :class:`ConflictError`."""
        return self._run(proto.heartbeat(job_id_of(job), lease_id, lease_seconds))

    def progress(
        self,
        job: Union[str, Job],
        lease_id: str,
        percent: Optional[float] = None,
        message: Optional[str] = None,
    ) -> LeaseStatus:
        """Reports how far a leased job has come (it renews the lease too)."""
        return self._run(proto.progress(job_id_of(job), lease_id, percent, message))

    def complete(self, job: Union[str, Job], lease_id: str, result: Any = None) -> Job:
        """Completes a leased job with ``result``: JSON, or ``bytes`` /
        :class:`JobResult` for a body of its own content type. A stale lease
        or a canceled job: :class:`ConflictError`."""
        return self._run(proto.complete(job_id_of(job), lease_id, result))

    def fail(
        self,
        job: Union[str, Job],
        lease_id: str,
        message: str,
        *,
        code: Optional[str] = None,
        retry: bool = True,
    ) -> Job:
        """Fails the attempt; with ``retry`` the job is tried again (with
        backoff) while it has attempts left."""
        return self._run(proto.fail(job_id_of(job), lease_id, message, code=code, retry=retry))

    def jwks(self) -> Dict[str, Any]:
        """The server's webhook JWT keys (``/.well-known/jwks.json``)."""
        return self._run(proto.jwks())
