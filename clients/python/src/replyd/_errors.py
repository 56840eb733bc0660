"""What can go wrong talking to replyd, as exceptions.

Every exception the SDK raises on purpose is a :class:`ReplydError`. An
answer with a 4xx or 5xx status is a :class:`ProblemError` carrying the
RFC 9457 problem the server sent (``type``, ``title``, ``status``,
``detail``), as the subclass for its status where there is one, so that
``except replyd.NotFoundError`` reads as what it means.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Type

from ._models import Problem

if TYPE_CHECKING:
    from ._models import Job


class ReplydError(Exception):
    """The base of every error this SDK raises."""


class TransportError(ReplydError):
    """No answer could be had: the connection was refused or broke, or the
    request timed out. The underlying ``httpx`` error is ``__cause__``."""


class UnexpectedResponseError(ReplydError):
    """The server answered something the contract does not allow here (an
    unexpected status, or a body that is not what it should be)."""

    def __init__(self, message: str, *, status: int, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status of the answer."""
        self.body = body
        """The answer's body (at most the first 64 KiB)."""


class StreamError(ReplydError):
    """A job's event stream could not be used: the endpoint answered
    something that is not ``text/event-stream``, an event was malformed, or
    the stream kept breaking. ``wait()`` falls back to polling on it;
    ``events()`` raises it."""


class WaitTimeoutError(ReplydError, TimeoutError):
    """``wait()`` ran out of time before the job finished."""

    def __init__(self, message: str, job: Optional["Job"]) -> None:
        super().__init__(message)
        self.job = job
        """The job as last seen (None if it was never read)."""


class ProblemError(ReplydError):
    """The server answered 4xx or 5xx with an RFC 9457 problem.

    ``problem`` is the body as the server sent it; when a body is not a
    problem (a proxy's HTML page, say) one is made up from the status and
    the text, with ``type`` ``about:blank``.
    """

    #: The status this class stands for (None: any).
    STATUS: Optional[int] = None

    def __init__(
        self,
        problem: Problem,
        *,
        status: int,
        headers: Optional[Mapping[str, str]] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        detail = f": {problem.detail}" if problem.detail else ""
        super().__init__(f"{status} {problem.title}{detail} ({problem.type})")
        self.problem = problem
        """The problem the server sent."""
        self.status = status
        """The HTTP status of the answer."""
        self.headers: Dict[str, str] = dict(headers or {})
        """The answer's headers (lowercase names)."""
        self.retry_after = retry_after
        """Seconds the server asked to wait before trying again
        (``Retry-After``), if it said."""

    @property
    def type(self) -> str:
        """The problem type, a URI such as ``urn:replyd:problem:unknown-queue``."""
        return self.problem.type

    @property
    def title(self) -> str:
        """A short summary of the problem type."""
        return self.problem.title

    @property
    def detail(self) -> str:
        """What exactly went wrong."""
        return self.problem.detail


class BadRequestError(ProblemError):
    """400: the request is malformed (the detail says what and where)."""

    STATUS = 400


class AuthenticationError(ProblemError):
    """401: no credentials, or unknown ones."""

    STATUS = 401


class PermissionDeniedError(ProblemError):
    """403: the credentials may not do this (e.g. a client key leasing)."""

    STATUS = 403


class NotFoundError(ProblemError):
    """404: no such job or queue (another tenant's job looks the same)."""

    STATUS = 404


class ConflictError(ProblemError):
    """409: the job is not in a state that allows this (a result of an
    unfinished job, a stale lease, a cancel of a finished job, the same
    Idempotency-Key still in flight)."""

    STATUS = 409


class GoneError(ProblemError):
    """410: the job's time to live has run out."""

    STATUS = 410


class PayloadTooLargeError(ProblemError):
    """413: the body (or a worker's result) is over the server's limit."""

    STATUS = 413


class UnprocessableEntityError(ProblemError):
    """422: the Idempotency-Key was used before with another body."""

    STATUS = 422


class RateLimitedError(ProblemError):
    """429: a limit of this client or tenant; see ``retry_after``."""

    STATUS = 429


class ServiceUnavailableError(ProblemError):
    """503: the server is overloaded or its database is unavailable; see
    ``retry_after``."""

    STATUS = 503


_BY_STATUS: Dict[int, Type[ProblemError]] = {
    cls.STATUS: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        GoneError,
        PayloadTooLargeError,
        UnprocessableEntityError,
        RateLimitedError,
        ServiceUnavailableError,
    )
    if cls.STATUS is not None
}

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def problem_from_body(status: int, body: bytes) -> Problem:
    """The problem in an error body, or one made up from the status and the
    text when the body is not one. Missing members are filled in."""
    title = _REASONS.get(status, "Error")
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and any(k in data for k in ("type", "title", "detail")):

        def text(key: str, default: str) -> str:
            value = data.get(key)
            return value if isinstance(value, str) else default

        code = data.get("status")
        known = {"type", "title", "status", "detail"}
        return Problem(
            type=text("type", "about:blank"),
            title=text("title", title),
            status=code if isinstance(code, int) and not isinstance(code, bool) else status,
            detail=text("detail", ""),
            extra={k: v for k, v in data.items() if k not in known},
        )
    detail = body[:2048].decode("utf-8", errors="replace").strip()
    return Problem(type="about:blank", title=title, status=status, detail=detail)


def problem_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    retry_after: Optional[float] = None,
) -> ProblemError:
    """The :class:`ProblemError` (subclass by status) for an error answer."""
    cls = _BY_STATUS.get(status, ProblemError)
    return cls(
        problem_from_body(status, body),
        status=status,
        headers={k.lower(): v for k, v in headers.items()},
        retry_after=retry_after,
    )
