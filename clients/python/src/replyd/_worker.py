"""The threaded worker loop over the lease API (API.md §5).

The thread that calls :meth:`Worker.run` leases jobs in batches, up to
the free slots (a stop aborts a lease request in flight); a pool of
``concurrency`` threads runs the handler, one job each; one more thread
heartbeats every running lease every third of its length and tells a job
whose client canceled it. :meth:`Worker.stop` (or SIGTERM/SIGINT, while
:meth:`Worker.run` runs in the main thread) stops leasing, lets running
jobs finish and reports them, then ``run`` returns.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _tracing
from ._client import AbortHandle, Client
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


class JobContext(ContextBase):
    """One leased job, as a :class:`Worker`'s handler sees it.

    ``job``, ``input``, ``attempt``; :meth:`progress` to report how far it
    has come; ``cancel_requested`` / ``should_stop`` / ``stopped`` to learn
    that it should stop (a client canceled the job, the lease was lost, or
    the worker's drain timeout passed).
    """

    def __init__(self, lease: Lease, queue: str, client: Client) -> None:
        super().__init__(lease, queue)
        self._client = client
        self.stopped = threading.Event()
        """Set once the handler should stop: ``ctx.stopped.wait(5)`` sleeps
        five seconds unless told to stop first (then it returns True)."""

    def progress(self, percent: Optional[float] = None, message: Optional[str] = None) -> None:
        """Reports progress (clients see it at once; it renews the lease).
        An unreachable server is logged, not raised; the answer may tell
        that the job was canceled (``cancel_requested`` then turns True)."""
        try:
            status = self._client.progress(self.job.id, self.lease_id, percent, message)
        except ReplydError as e:
            self._lost_or_logged(e, "progress")
            return
        if status.cancel_requested:
            self._stop(CANCELED)

    def _stop(self, reason: str) -> bool:
        first = super()._stop(reason)
        self.stopped.set()
        return first

    def _lost_or_logged(self, error: ReplydError, call: str) -> None:
        if lease_lost(error):
            self._stop(LEASE_LOST)
        else:
            log.warning("job %s: %s failed: %s", self.job.id, call, error)


class _Slot:
    """A running job's lease, for the heartbeat thread."""

    def __init__(self, ctx: JobContext, every: float) -> None:
        self.ctx = ctx
        self.next_beat = time.monotonic() + every


class Worker:
    """Runs ``handler(ctx)`` for each job of ``queue``.

    The handler's return value completes the job: JSON, or ``bytes`` /
    :class:`~replyd.JobResult` for a body of its own content type. An
    exception fails the attempt and asks for a retry;
    :class:`~replyd.Permanent` fails it for good.

    ``concurrency`` jobs run at once (threads); leases are asked for in
    batches of up to ``batch`` (default: ``concurrency``), each lasting
    ``lease_seconds`` and renewed by heartbeats while the handler runs;
    a lease request waits up to ``wait_seconds`` for work. After
    :meth:`stop`, running handlers may go on; ``drain_timeout`` seconds
    later (if set) they are told to stop (``ctx.stop_reason ==
    "shutdown"``). ``run`` returns once they all have returned.

    >>> def handler(ctx):                                       # doctest: +SKIP
    ...     ctx.progress(50, "half way")
    ...     return {"pages": 10}
    >>> Worker(client, "report", handler, concurrency=4).run()  # doctest: +SKIP
    """

    def __init__(
        self,
        client: Client,
        queue: str,
        handler: Callable[[JobContext], Any],
        *,
        concurrency: int = 1,
        lease_seconds: float = 30.0,
        batch: Optional[int] = None,
        wait_seconds: float = 20.0,
        name: Optional[str] = None,
        drain_timeout: Optional[float] = None,
    ) -> None:
        self.client = client
        self.handler = handler
        self.settings: WorkerSettings = settings(
            queue, concurrency, lease_seconds, batch, wait_seconds, name, drain_timeout
        )
        self._cond = threading.Condition()
        self._stopping = False
        self._slots: Dict[str, _Slot] = {}
        self._free = self.settings.concurrency
        self._error: Optional[BaseException] = None
        self._abort: Optional[AbortHandle] = None

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (or a signal came)."""
        return self._stopping

    def stop(self) -> None:
        """Stops leasing (a lease request in flight is aborted); running
        jobs finish, then :meth:`run` returns. Safe from any thread and
        from a signal handler."""
        with self._cond:
            self._stopping = True
            if self._abort is not None:
                self._abort.abort()
            self._cond.notify_all()

    def run(self, *, handle_signals: bool = True) -> None:
        """Works until stopped; raises what makes leasing impossible (an
        unknown queue, a key that may not lease). With ``handle_signals``
        and in the main thread, SIGTERM and SIGINT call :meth:`stop` (a
        second one is handled as it was before ``run``)."""
        restore = self._install_signals() if handle_signals else {}
        s = self.settings
        pool = ThreadPoolExecutor(max_workers=s.concurrency, thread_name_prefix=f"replyd-{s.queue}")
        beats = threading.Thread(target=self._heartbeats, name="replyd-heartbeats", daemon=True)
        beats.start()
        log.info("worker %s: leasing from %s (concurrency %d)", s.name, s.queue, s.concurrency)
        try:
            while not self._stopping:
                with self._cond:
                    self._cond.wait_for(lambda: self._free > 0 or self._stopping, timeout=1.0)
                    want = min(s.batch, self._free)
                if self._stopping or want == 0:
                    continue
                for lease in self._lease(want):
                    with self._cond:
                        self._free -= 1
                        ctx = JobContext(lease, s.queue, self.client)
                        self._slots[lease.job.id] = _Slot(ctx, s.heartbeat_every)
                    pool.submit(self._work, lease, ctx)
            self._drain()
        finally:
            self.stop()
            pool.shutdown(wait=True)
            with self._cond:
                self._cond.notify_all()
            beats.join(timeout=5.0)
            for signum, previous in restore.items():
                signal.signal(signum, previous)
            log.info("worker %s: stopped", s.name)
        if self._error is not None:
            raise self._error

    # ---- leasing -----------------------------------------------------
    def _lease(self, want: int) -> List[Lease]:
        """Leases up to ``want`` jobs. A stop aborts the request (its
        connection is shut down, and replyd leases nothing to it); leases
        that arrived before are run like any other."""
        s = self.settings
        abort = AbortHandle()
        with self._cond:
            if self._stopping:
                return []
            self._abort = abort
        try:
            return self.client._lease_abortable(
                s.queue, want, abort, worker=s.name, lease_seconds=s.lease_seconds, wait=s.wait_seconds
            )
        except ReplydError as error:
            if abort.aborted:
                return []
            if is_permanent_lease_error(error):
                log.error("worker %s: cannot lease from %s: %s", s.name, s.queue, error)
                self._error = error
                self.stop()
            else:
                log.warning("worker %s: lease failed: %s", s.name, error)
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, timeout=1.0)
            return []
        finally:
            with self._cond:
                self._abort = None

    def _drain(self) -> None:
        """Waits for running jobs; past ``drain_timeout`` tells them to stop."""
        timeout = self.settings.drain_timeout
        with self._cond:
            done = self._cond.wait_for(
                lambda: self._free == self.settings.concurrency, timeout=timeout
            )
            if not done:
                log.warning("worker: jobs still running after %ss; telling them to stop", timeout)
                for slot in self._slots.values():
                    slot.ctx._stop(SHUTDOWN)

    # ---- running a job -----------------------------------------------
    def _work(self, lease: Lease, ctx: JobContext) -> None:
        job = lease.job
        traceparent, tracestate = lease_trace(lease)
        try:
            value: Any = None
            failure: Optional[Tuple[str, Optional[str], bool]] = None
            try:
                with _tracing.process_span(
                    self.settings.queue, job.id, job.attempt, traceparent, tracestate
                ):
                    value = self.handler(ctx)
            except Exception as e:  # noqa: BLE001 - any handler failure fails the attempt
                failure = failure_of(e)
                if failure[2]:
                    log.warning("job %s: handler raised %r", job.id, e, exc_info=True)
            if ctx.stop_reason == LEASE_LOST:
                log.warning("job %s: lease lost; outcome not reported", job.id)
            else:
                self._report(ctx, value, failure)
        finally:
            with self._cond:
                self._slots.pop(job.id, None)
                self._free += 1
                self._cond.notify_all()

    def _report(
        self, ctx: JobContext, value: Any, failure: Optional[Tuple[str, Optional[str], bool]]
    ) -> None:
        """Completes the job with ``value``, or fails it with ``failure``
        (message, code, retry); sends again while the server is unreachable;
        a refused result (too large, say) fails the job instead."""
        job_id = ctx.job.id
        for attempt in range(1, REPORT_ATTEMPTS + 1):
            try:
                if failure is None:
                    self.client.complete(job_id, ctx.lease_id, value)
                else:
                    message, code, retry = failure
                    self.client.fail(job_id, ctx.lease_id, message, code=code, retry=retry)
                return
            except ReplydError as e:
                if lease_lost(e):
                    why = ctx.stop_reason or "lease lost"
                    log.info("job %s: outcome not recorded (%s): %s", job_id, why, e)
                    return
                if report_is_transient(e) and attempt < REPORT_ATTEMPTS:
                    time.sleep(min(8.0, 0.5 * 2.0**attempt))
                    continue
                log.error("job %s: could not report the outcome: %s", job_id, e)
                if failure is None and not report_is_transient(e):
                    self._fail_refused(ctx, e)
                return

    def _fail_refused(self, ctx: JobContext, error: ReplydError) -> None:
        try:
            self.client.fail(
                ctx.job.id,
                ctx.lease_id,
                f"the server refused the result: {error}",
                code="result_refused",
                retry=False,
            )
        except ReplydError as again:
            log.error("job %s: could not fail it either: %s", ctx.job.id, again)

    # ---- heartbeats and signals ----------------------------------------
    def _heartbeats(self) -> None:
        every = self.settings.heartbeat_every
        while True:
            with self._cond:
                if self._stopping and self._free == self.settings.concurrency:
                    return
                now = time.monotonic()
                due = [slot for slot in self._slots.values() if slot.next_beat <= now]
                upcoming = [slot.next_beat for slot in self._slots.values()]
                if not due:
                    pause = min(upcoming) - now if upcoming else 1.0
                    self._cond.wait(timeout=max(0.01, min(1.0, pause)))
                    continue
                for slot in due:
                    slot.next_beat = now + every
            for slot in due:
                self._beat(slot.ctx)

    def _beat(self, ctx: JobContext) -> None:
        if ctx.stop_reason in (CANCELED, LEASE_LOST):
            return
        try:
            status = self.client.heartbeat(ctx.job.id, ctx.lease_id, self.settings.lease_seconds)
        except ReplydError as e:
            ctx._lost_or_logged(e, "heartbeat")
            return
        if status.cancel_requested:
            ctx._stop(CANCELED)

    def _install_signals(self) -> Dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: Dict[int, Any] = {}

        def on_signal(signum: int, frame: Optional[FrameType]) -> None:
            log.info("worker: signal %d: finishing running jobs, then stopping", signum)
            for number, handler in previous.items():
                signal.signal(number, handler)
            self.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, on_signal)
        return previous
