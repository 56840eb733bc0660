"""What the threaded :class:`~replyd.Worker` and the asyncio
:class:`~replyd.AsyncWorker` share: the handler's view of a job, how its
return value or exception becomes an outcome, and the loop's settings."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from ._errors import ConflictError, GoneError, NotFoundError, ProblemError, ReplydError
from ._models import Job, Lease

log = logging.getLogger("replyd.worker")

#: Why a handler should stop: a client canceled the job.
CANCELED = "canceled"
#: Why a handler should stop: the lease is gone (it expired, or another
#: attempt owns the job); nothing it reports will be recorded.
LEASE_LOST = "lease_lost"
#: Why a handler should stop: the worker is shutting down and its drain
#: timeout has passed.
SHUTDOWN = "shutdown"

#: How many times an outcome is sent while the server is unreachable.
REPORT_ATTEMPTS = 4


class Permanent(Exception):
    """Raise it from a handler to fail the job without another attempt.

    >>> def handler(ctx):                                    # doctest: +SKIP
    ...     if "month" not in ctx.input:
    ...         raise Permanent("no month given", code="bad_input")

    Any other exception fails the attempt with a retry (while the job has
    attempts left).
    """

    def __init__(self, message: str, *, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        """What went wrong, as the job's ``error.message``."""
        self.code = code
        """A short machine-readable code, as the job's ``error.code``."""


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker leases and keeps its leases."""

    queue: str
    concurrency: int
    lease_seconds: float
    batch: int
    wait_seconds: float
    name: str
    drain_timeout: Optional[float]

    @property
    def heartbeat_every(self) -> float:
        """Seconds between two heartbeats of one lease: a third of its length."""
        return max(0.2, self.lease_seconds / 3.0)


def settings(
    queue: str,
    concurrency: int,
    lease_seconds: float,
    batch: Optional[int],
    wait_seconds: float,
    name: Optional[str],
    drain_timeout: Optional[float],
) -> WorkerSettings:
    """Checked settings (``ValueError`` for impossible ones)."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if not 0 < lease_seconds <= 3600:
        raise ValueError("lease_seconds must be in (0, 3600]")
    if not 0 <= wait_seconds <= 60:
        raise ValueError("wait_seconds must be in [0, 60]")
    size = concurrency if batch is None else batch
    if not 1 <= size <= 100:
        raise ValueError("batch must be in [1, 100]")
    return WorkerSettings(
        queue=queue,
        concurrency=concurrency,
        lease_seconds=float(lease_seconds),
        batch=size,
        wait_seconds=float(wait_seconds),
        name=name or default_name(),
        drain_timeout=drain_timeout,
    )


def default_name() -> str:
    """``HOST-PID``: how the worker is named in the server's logs."""
    return f"{socket.gethostname() or 'worker'}-{os.getpid()}"


def lease_trace(lease: Lease) -> Tuple[Optional[str], Optional[str]]:
    """The lease's ``traceparent`` and ``tracestate``: the trace context the
    worker continues (its parent is replyd's span for the attempt)."""
    return lease.traceparent or None, lease.tracestate or None


def failure_of(error: BaseException) -> Tuple[str, Optional[str], bool]:
    """(message, code, retry) for a handler's exception."""
    if isinstance(error, Permanent):
        return error.message, error.code, False
    message = str(error) or type(error).__name__
    return message, type(error).__name__, True


def lease_lost(error: BaseException) -> bool:
    """Whether a heartbeat/progress error means the lease is gone."""
    return isinstance(error, (ConflictError, NotFoundError, GoneError))


def is_permanent_lease_error(error: BaseException) -> bool:
    """Lease errors that retrying will not fix: a wrong queue or key."""
    return isinstance(error, ProblemError) and error.status in (400, 401, 403, 404, 405, 409, 422)


def report_is_transient(error: BaseException) -> bool:
    """Whether sending an outcome again may succeed."""
    if isinstance(error, ProblemError):
        return error.status == 429 or error.status >= 500
    return isinstance(error, ReplydError)


class ContextBase:
    """The parts of a handler's context that do not depend on threads or asyncio."""

    def __init__(self, lease: Lease, queue: str) -> None:
        self.job: Job = lease.job
        """The job as it was leased (its ``input`` included)."""
        self.input: Any = lease.job.input
        """The job's input."""
        self.lease_id: str = lease.lease_id
        """The lease; every report about this attempt names it."""
        self.queue = queue
        """The queue the job came from."""
        self.attempt: int = lease.job.attempt
        """This attempt's number, from 1."""
        self.stop_reason: Optional[str] = None
        """Why the handler should stop, once it should: ``"canceled"``,
        ``"lease_lost"`` or ``"shutdown"``; None while it should go on."""

    @property
    def cancel_requested(self) -> bool:
        """Whether a client canceled the job: stop, whatever you return
        the job ends ``canceled``."""
        return self.stop_reason == CANCELED

    @property
    def should_stop(self) -> bool:
        """Whether the handler should stop now (see ``stop_reason``)."""
        return self.stop_reason is not None

    def _stop(self, reason: str) -> bool:
        """Records why to stop; False if a reason was already recorded."""
        if self.stop_reason is not None:
            return False
        self.stop_reason = reason
        log.info("job %s: stop (%s)", self.job.id, reason)
        return True
