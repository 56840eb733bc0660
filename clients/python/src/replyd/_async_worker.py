"""The asyncio worker loop: :class:`~replyd.Worker`, with tasks for threads.

Each running job is a task; a second task per job heartbeats its lease.
When a client cancels the job, the handler's task is cancelled
(``CancelledError`` at its next ``await``) and ``ctx.cancel_requested`` is
True; the job ends ``canceled``.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple

from . import _tracing
from ._async_client import AsyncClient
from ._errors import ReplydError
from ._models import Lease
from ._worker_common import (
    CANCELED,
    LEASE_LOST,
    REPORT_ATTEMPTS,
    SHUTDOWN,
    ContextBase,
    WorkerSettings,
    failure_of,
    is_permanent_lease_error,
    lease_lost,
    lease_trace,
    log,
    report_is_transient,
    settings,
)

Failure = Tuple[str, Optional[str], bool]


class AsyncJobContext(ContextBase):
    """One leased job, as an :class:`AsyncWorker`'s handler sees it: the
    same as :class:`~replyd.JobContext`, with ``await ctx.progress(...)``
    and ``stopped`` an :class:`asyncio.Event`."""

    def __init__(self, lease: Lease, queue: str, client: AsyncClient) -> None:
        super().__init__(lease, queue)
        self._client = client
        self._task: Optional["asyncio.Task[Any]"] = None
        self._cancel_task = True
        self.stopped = asyncio.Event()
        """Set once the handler should stop (see ``stop_reason``)."""

    async def progress(self, percent: Optional[float] = None, message: Optional[str] = None) -> None:
        """Reports progress (clients see it at once; it renews the lease).
        An unreachable server is logged, not raised. If the answer says the
        job was canceled, the handler is cancelled."""
        try:
            status = await self._client.progress(self.job.id, self.lease_id, percent, message)
        except ReplydError as e:
            if lease_lost(e):
                self._stop(LEASE_LOST)
            else:
                log.warning("job %s: progress failed: %s", self.job.id, e)
            return
        if status.cancel_requested:
            self._stop(CANCELED)

    def _stop(self, reason: str) -> bool:
        first = super()._stop(reason)
        self.stopped.set()
        if first and self._task is not None and (self._cancel_task or reason == SHUTDOWN):
            self._task.cancel()
        return first


class AsyncWorker:
    """Runs ``await handler(ctx)`` for each job of ``queue``; see
    :class:`~replyd.Worker` for what the handler returns or raises and for
    the settings. ``cancel_on_request`` (default True) cancels the
    handler's task when a client cancels its job; otherwise the handler
    learns it from ``ctx.cancel_requested`` / ``ctx.stopped``.

    >>> async def handler(ctx):                                        # doctest: +SKIP
    ...     await ctx.progress(50, "half way")
    ...     return {"pages": 10}
    >>> await AsyncWorker(client, "report", handler, concurrency=8).run()  # doctest: +SKIP
    """

    def __init__(
        self,
        client: AsyncClient,
        queue: str,
        handler: Callable[[AsyncJobContext], Awaitable[Any]],
        *,
        concurrency: int = 1,
        lease_seconds: float = 30.0,
        batch: Optional[int] = None,
        wait_seconds: float = 20.0,
        name: Optional[str] = None,
        drain_timeout: Optional[float] = None,
        cancel_on_request: bool = True,
    ) -> None:
        self.client = client
        self.handler = handler
        self.settings: WorkerSettings = settings(
            queue, concurrency, lease_seconds, batch, wait_seconds, name, drain_timeout
        )
        self.cancel_on_request = cancel_on_request
        self._stop_requested = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_event: Optional[asyncio.Event] = None
        self._running: Dict[str, AsyncJobContext] = {}
        self._error: Optional[BaseException] = None

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (or a signal came)."""
        return self._stop_requested

    def stop(self) -> None:
        """Stops leasing; running jobs finish, then :meth:`run` returns.
        Safe from any thread."""
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is None or event is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            loop.call_soon_threadsafe(event.set)

    async def run(self, *, handle_signals: bool = True) -> None:
        """Works until stopped; raises what makes leasing impossible (an
        unknown queue, a key that may not lease). With ``handle_signals``
        (in the main thread, on Unix), SIGTERM and SIGINT call :meth:`stop`."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stop_requested:
            self._stop_event.set()
        installed = self._install_signals() if handle_signals else []
        s = self.settings
        tasks: Set["asyncio.Task[None]"] = set()
        slot_freed = asyncio.Event()
        log.info("worker %s: leasing from %s (concurrency %d)", s.name, s.queue, s.concurrency)
        try:
            while not self._stop_event.is_set():
                free = s.concurrency - len(tasks)
                if free == 0:
                    slot_freed.clear()
                    await _first(slot_freed.wait(), self._stop_event.wait())
                    continue
                leases = await self._lease(min(s.batch, free))

                def finished(task: "asyncio.Task[None]") -> None:
                    tasks.discard(task)
                    slot_freed.set()

                for lease in leases:
                    task = asyncio.ensure_future(self._work(lease))
                    tasks.add(task)
                    task.add_done_callback(finished)
            await self._drain(tasks)
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            for signum in installed:
                self._loop.remove_signal_handler(signum)
            log.info("worker %s: stopped", s.name)
        if self._error is not None:
            raise self._error

    async def _lease(self, want: int) -> List[Lease]:
        s = self.settings
        assert self._stop_event is not None
        leasing = asyncio.ensure_future(
            self.client.lease_batch(
                s.queue, want, worker=s.name, lease_seconds=s.lease_seconds, wait=s.wait_seconds
            )
        )
        await _first(leasing, self._stop_event.wait())
        if not leasing.done():
            # A lease the server grants as this request is dropped expires
            # and its job is tried again.
            leasing.cancel()
            await asyncio.gather(leasing, return_exceptions=True)
            return []
        try:
            return leasing.result()
        except ReplydError as e:
            if is_permanent_lease_error(e):
                log.error("worker %s: cannot lease from %s: %s", s.name, s.queue, e)
                self._error = e
                self.stop()
            else:
                log.warning("worker %s: lease failed: %s", s.name, e)
                await _first(asyncio.sleep(1.0), self._stop_event.wait())
            return []

    async def _drain(self, tasks: Set["asyncio.Task[None]"]) -> None:
        if not tasks:
            return
        timeout = self.settings.drain_timeout
        _, pending = await asyncio.wait(set(tasks), timeout=timeout)
        if pending:
            log.warning("worker: jobs still running after %ss; stopping them", timeout)
            for ctx in list(self._running.values()):
                ctx._stop(SHUTDOWN)
            await asyncio.wait(pending)

    async def _work(self, lease: Lease) -> None:
        ctx = AsyncJobContext(lease, self.settings.queue, self.client)
        ctx._cancel_task = self.cancel_on_request
        handler = asyncio.ensure_future(self._call(ctx, lease))
        ctx._task = handler
        self._running[lease.job.id] = ctx
        beats = asyncio.ensure_future(self._heartbeats(ctx))
        try:
            await asyncio.wait({handler})
        finally:
            beats.cancel()
            if not handler.done():
                handler.cancel()
            self._running.pop(lease.job.id, None)
        value: Any = None
        failure: Optional[Failure] = None
        if handler.cancelled():
            if ctx.stop_reason == SHUTDOWN:
                failure = ("the worker shut down before the job finished", "worker_shutdown", True)
            else:
                failure = ("canceled", "canceled", False)
        elif handler.exception() is not None:
            error = handler.exception()
            assert error is not None
            failure = failure_of(error)
            if failure[2]:
                log.warning("job %s: handler raised %r", lease.job.id, error, exc_info=error)
        else:
            value = handler.result()
        if ctx.stop_reason == LEASE_LOST:
            log.warning("job %s: lease lost; outcome not reported", lease.job.id)
            return
        await self._report(ctx, value, failure)

    async def _call(self, ctx: AsyncJobContext, lease: Lease) -> Any:
        traceparent, tracestate = lease_trace(lease)
        job = lease.job
        with _tracing.process_span(self.settings.queue, job.id, job.attempt, traceparent, tracestate):
            return await self.handler(ctx)

    async def _report(self, ctx: AsyncJobContext, value: Any, failure: Optional[Failure]) -> None:
        job_id = ctx.job.id
        for attempt in range(1, REPORT_ATTEMPTS + 1):
            try:
                if failure is None:
                    await self.client.complete(job_id, ctx.lease_id, value)
                else:
                    message, code, retry = failure
                    await self.client.fail(job_id, ctx.lease_id, message, code=code, retry=retry)
                return
            except ReplydError as e:
                if lease_lost(e):
                    why = ctx.stop_reason or "lease lost"
                    log.info("job %s: outcome not recorded (%s): %s", job_id, why, e)
                    return
                if report_is_transient(e) and attempt < REPORT_ATTEMPTS:
                    await asyncio.sleep(min(8.0, 0.5 * 2.0**attempt))
                    continue
                log.error("job %s: could not report the outcome: %s", job_id, e)
                if failure is None and not report_is_transient(e):
                    try:
                        await self.client.fail(
                            job_id,
                            ctx.lease_id,
                            f"the server refused the result: {e}",
                            code="result_refused",
                            retry=False,
                        )
                    except ReplydError as again:
                        log.error("job %s: could not fail it either: %s", job_id, again)
                return

    async def _heartbeats(self, ctx: AsyncJobContext) -> None:
        while ctx.stop_reason not in (CANCELED, LEASE_LOST):
            await asyncio.sleep(self.settings.heartbeat_every)
            try:
                status = await self.client.heartbeat(
                    ctx.job.id, ctx.lease_id, self.settings.lease_seconds
                )
            except ReplydError as e:
                if lease_lost(e):
                    ctx._stop(LEASE_LOST)
                else:
                    log.warning("job %s: heartbeat failed: %s", ctx.job.id, e)
                continue
            if status.cancel_requested:
                ctx._stop(CANCELED)

    def _install_signals(self) -> List[int]:
        assert self._loop is not None
        loop = self._loop
        installed: List[int] = []

        def on_signal(signum: int) -> None:
            log.info("worker: signal %d: finishing running jobs, then stopping", signum)
            for number in list(installed):
                loop.remove_signal_handler(number)
                installed.remove(number)
            self.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            installed.append(signum)
        return installed


async def _first(*awaitables: Awaitable[Any]) -> None:
    """Waits until the first of ``awaitables`` is done; cancels the
    others that this call started (a task passed in is left running)."""
    futures = [asyncio.ensure_future(a) for a in awaitables]
    started = [f for f, a in zip(futures, awaitables) if f is not a]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in started:
            if not future.done():
                future.cancel()
