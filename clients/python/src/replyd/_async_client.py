"""The asyncio client: :class:`~replyd.Client`'s surface, awaited.

Requests, answers, retries and the polling plan are the shared ones of
``_protocol`` and ``_events``; only sending and sleeping differ.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, AsyncIterator, Dict, List, Optional, TypeVar, Union

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


class AsyncClient(BaseClient):
    """An asyncio connection to one replyd server: the same methods as
    :class:`~replyd.Client`, as coroutines (``events`` and ``list_all`` are
    async iterators).

    >>> async with AsyncClient("http://127.0.0.1:8202") as client:  # doctest: +SKIP
    ...     job = await client.submit("report", {"month": "2024-05"})
    ...     done = await client.wait(job, timeout=60)
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: Optional[str] = None,
        *,
        timeout: float = 30.0,
        retry: Optional[RetryPolicy] = None,
        headers: Optional[Dict[str, str]] = None,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retry, headers)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(follow_redirects=False)

    async def aclose(self) -> None:
        """Closes the connections (not a client passed in as ``http_client``)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- sending -----------------------------------------------------
    async def _send(self, call: Call[Any]) -> Answer:
        response = await self._http.request(
            call.method, self._url(call.path), **self._request_args(call)
        )
        return Answer(response.status_code, response.headers, response.content)

    async def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._send(call)
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
            await asyncio.sleep(pause)

    # ---- the client side ---------------------------------------------
    async def submit(
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
        """Submits a job; see :meth:`replyd.Client.submit`."""
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
        answer = await self._run(call)
        if isinstance(answer, Finished):
            job = await self._run(proto.get(answer.job_id))
            return dataclasses.replace(job, result=answer.result)
        return answer

    async def get(self, job: Union[str, Job]) -> Job:
        """The job as it is now; see :meth:`replyd.Client.get`."""
        return await self._run(proto.get(job_id_of(job)))

    async def result(self, job: Union[str, Job]) -> JobResult:
        """The result of a succeeded job; see :meth:`replyd.Client.result`."""
        return await self._run(proto.result(job_id_of(job)))

    async def cancel(self, job: Union[str, Job]) -> Job:
        """Cancels the job; see :meth:`replyd.Client.cancel`."""
        return await self._run(proto.cancel(job_id_of(job)))

    async def delete(self, job: Union[str, Job]) -> None:
        """Removes a finished job; see :meth:`replyd.Client.delete`."""
        await self._run(proto.delete(job_id_of(job)))

    async def list(
        self,
        *,
        queue: Optional[str] = None,
        state: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> JobList:
        """One page of the caller's jobs; see :meth:`replyd.Client.list`."""
        return await self._run(proto.list_jobs(queue, state, limit, cursor))

    async def list_all(
        self,
        *,
        queue: Optional[str] = None,
        state: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> AsyncIterator[Job]:
        """Every job :meth:`list` would give, page after page, lazily."""
        cursor: Optional[str] = None
        while True:
            page = await self.list(queue=queue, state=state, limit=page_size, cursor=cursor)
            for job in page.jobs:
                yield job
            if not page.next_cursor or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    # ---- following a job ---------------------------------------------
    async def events(
        self, job: Union[str, Job], after: Optional[int] = None
    ) -> AsyncIterator[JobEvent]:
        """The job's events; see :meth:`replyd.Client.events`."""
        _, url, _ = self._targets(job)
        async for event in self._follow(url, EventCursor(after)):
            yield event

    async def wait(self, job: Union[str, Job], timeout: Optional[float] = None) -> Job:
        """Waits until the job has finished; see :meth:`replyd.Client.wait`."""
        job_id, url, link = self._targets(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: List[Job] = []

        async def follow() -> Optional[Job]:
            async for event in self._follow(url, EventCursor()):
                seen[:] = [event.job]
                if event.is_terminal:
                    return event.job
            return None

        finished: Optional[Job] = None
        try:
            if timeout is None:
                finished = await follow()
            else:
                finished = await asyncio.wait_for(follow(), max(0.0, timeout))
        except asyncio.TimeoutError:
            last = seen[0] if seen else None
            raise WaitTimeoutError(f"job {job_id} did not finish within {timeout} s", last) from None
        except (StreamError, ProblemError) as e:
            log.info("job %s: events unavailable (%s); polling instead", job_id, e)
        if finished is not None:
            return finished
        return await self._poll(job_id, link, deadline, seen[0] if seen else None, timeout)

    async def _poll(
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
                await asyncio.sleep(pause)
            left = plan.remaining()
            if left is not None and left <= 0:
                last = plan.last.job if plan.last is not None else seen
                raise WaitTimeoutError(f"job {job_id} did not finish within {timeout} s", last)
            changed = plan.update(await self._run(call))
            if changed is not None and changed.is_terminal:
                return changed

    async def _follow(self, url: str, cursor: EventCursor) -> AsyncIterator[JobEvent]:
        while not cursor.done:
            pause = cursor.pause()
            if pause > 0:
                await asyncio.sleep(pause)
            try:
                async with self._http.stream(
                    "GET",
                    url,
                    headers=self._request_headers(cursor.headers()),
                    timeout=self._stream_timeout(None),
                ) as response:
                    error = None
                    if response.status_code >= 400:
                        await response.aread()
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
                    frames = EventSource(response).aiter_sse()
                    try:
                        reconnect = False
                        async for sse in frames:
                            try:
                                event = cursor.feed(sse)
                            except Reconnect:
                                reconnect = True
                                break
                            if event is not None:
                                yield event
                            if cursor.done:
                                return
                        if not reconnect:
                            cursor.ended()
                    finally:
                        await frames.aclose()
            except httpx.TransportError as e:
                cursor.broke(e)

    # ---- the worker side ---------------------------------------------
    async def lease(
        self,
        queue: str,
        *,
        worker: Optional[str] = None,
        lease_seconds: Optional[float] = None,
        wait: Optional[float] = None,
    ) -> Optional[Lease]:
        """Leases one job; see :meth:`replyd.Client.lease`."""
        leases = await self.lease_batch(
            queue, 1, worker=worker, lease_seconds=lease_seconds, wait=wait
        )
        return leases[0] if leases else None

    async def lease_batch(
        self,
        queue: str,
        batch: int,
        *,
        worker: Optional[str] = None,
        lease_seconds: Optional[float] = None,
        wait: Optional[float] = None,
    ) -> List[Lease]:
        """Leases up to ``batch`` jobs; see :meth:`replyd.Client.lease_batch`."""
        return await self._run(
            proto.lease(queue, batch=batch, worker=worker, lease_seconds=lease_seconds, wait=wait)
        )

    async def heartbeat(
        self, job: Union[str, Job], lease_id: str, lease_seconds: Optional[float] = None
    ) -> LeaseStatus:
        """Renews a lease; see :meth:`replyd.Client.heartbeat`."""
        return await self._run(proto.heartbeat(job_id_of(job), lease_id, lease_seconds))

    async def progress(
        self,
        job: Union[str, Job],
        lease_id: str,
        percent: Optional[float] = None,
        message: Optional[str] = None,
    ) -> LeaseStatus:
        """Reports progress; see :meth:`replyd.Client.progress`."""
        return await self._run(proto.progress(job_id_of(job), lease_id, percent, message))

    async def complete(self, job: Union[str, Job], lease_id: str, result: Any = None) -> Job:
        """Completes a leased job; see :meth:`replyd.Client.complete`."""
        return await self._run(proto.complete(job_id_of(job), lease_id, result))

    async def fail(
        self,
        job: Union[str, Job],
        lease_id: str,
        message: str,
        *,
        code: Optional[str] = None,
        retry: bool = True,
    ) -> Job:
        """Fails the attempt; see :meth:`replyd.Client.fail`."""
        return await self._run(
            proto.fail(job_id_of(job), lease_id, message, code=code, retry=retry)
        )

    async def jwks(self) -> Dict[str, Any]:
        """The server's webhook JWT keys (``/.well-known/jwks.json``)."""
        return await self._run(proto.jwks())
