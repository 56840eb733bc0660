"""The wire types of replyd's API, generated from ``clients/openapi.json``.

DO NOT EDIT: run ``python scripts/gen_models.py`` (in ``clients/python``).

Answers are frozen dataclasses: ``from_json`` checks each member's type
(``ValueError`` when the server sent something else) and keeps members
this version does not know in ``extra``. Request bodies are ``TypedDict``s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Dict, FrozenSet, List, Mapping, Optional, TypedDict, Union

from ._result import JobResult

#: Every state a job can be in (``JobState``).
JOB_STATES = ('scheduled', 'queued', 'running', 'succeeded', 'failed', 'canceled')
#: The states a job ends in.
TERMINAL_STATES = ("succeeded", "failed", "canceled")

_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d\d):(\d\d))$"
)


def _fail(where: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{where}: expected {expected}, got {type(value).__name__}")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, "a string", value)
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, "an integer", value)
    return value


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, "a number", value)
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, "a boolean", value)
    return value


def _list(value: Any, where: str) -> List[Any]:
    if not isinstance(value, list):
        raise _fail(where, "an array", value)
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, "an object", value)
    return value


def _time(value: Any, where: str) -> datetime:
    """An RFC 3339 time, as an aware datetime (any number of fraction digits)."""
    match = _TIME.match(_str(value, where))
    if match is None:
        raise ValueError(f"{where}: {value!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = (match.group(7) or "0")[:6].ljust(6, "0")
    if match.group(8):
        tz = timezone.utc
    else:
        offset = timedelta(hours=int(match.group(10)), minutes=int(match.group(11)))
        tz = timezone(offset if match.group(9) == "+" else -offset)
    try:
        return datetime(year, month, day, hour, minute, min(second, 59), int(fraction), tz)
    except ValueError as e:
        raise ValueError(f"{where}: {value!r}: {e}") from None


def _required(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ValueError(f"{where} is missing")
    return data[key]


def _extra(data: Mapping[str, Any], known: FrozenSet[str]) -> Dict[str, Any]:
    return {k: v for k, v in data.items() if k not in known}


@dataclass(frozen=True)
class Progress:
    """How far a running job has come, as its worker last reported."""

    message: Optional[str] = None
    percent: Optional[float] = None
    """0 to 100."""
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    """Members of the answer that this version of the SDK does not know."""

    _KEYS: ClassVar[FrozenSet[str]] = frozenset(['message', 'percent'])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Progress:
        """Reads a ``Progress`` from its decoded JSON (``ValueError`` if malformed)."""
        return cls(
            message=None if data.get('message') is None else _str(data.get('message'), 'Progress.message'),
            percent=None if data.get('percent') is None else _float(data.get('percent'), 'Progress.percent'),
            extra=_extra(data, cls._KEYS),
        )


@dataclass(frozen=True)
class JobError:
    """Why a job failed or was canceled."""

    code: str
    """A short machine-readable code, e.g. `worker_error`, `canceled`, `lease_expired`."""
    message: str
    status: Optional[int] = None
    """The HTTP status an upstream service answered (the gateway and the
    `http` executor), when that is why.
    """
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    """Members of the answer that this version of the SDK does not know."""

    _KEYS: ClassVar[FrozenSet[str]] = frozenset(['code', 'message', 'status'])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobError:
        """Reads a ``JobError`` from its decoded JSON (``ValueError`` if malformed)."""
        return cls(
            code=_str(_required(data, 'code', 'JobError.code'), 'JobError.code'),
            message=_str(_required(data, 'message', 'JobError.message'), 'JobError.message'),
            status=None if data.get('status') is None else _int(data.get('status'), 'JobError.status'),
            extra=_extra(data, cls._KEYS),
        )


@dataclass(frozen=True)
class Links:
    """Links of a job. They carry the job token as `access_token`, so that a
    backend can hand them to a browser.
    """

    events: str
    result: str
    self_: str
    output: Optional[str] = None
    """The job's output, a Durable Stream (older servers send none)."""
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    """Members of the answer that this version of the SDK does not know."""

    _KEYS: ClassVar[FrozenSet[str]] = frozenset(['events', 'output', 'result', 'self'])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Links:
        """Reads a ``Links`` from its decoded JSON (``ValueError`` if malformed)."""
        return cls(
            events=_str(_required(data, 'events', 'Links.events'), 'Links.events'),
            result=_str(_required(data, 'result', 'Links.result'), 'Links.result'),
            self_=_str(_required(data, 'self', 'Links.self'), 'Links.self'),
            output=None if data.get('output') is None else _str(data.get('output'), 'Links.output'),
            extra=_extra(data, cls._KEYS),
        )


@dataclass(frozen=True)
class Output:
    """How much output a job has, as its `job.output` events announced it;
    in a `job.output` event, also the part it announces: bytes `offset` to
    `next_offset` (offsets of `links.output`), inline as `text` when the
    output is text and the part is small.
    """

    bytes: int
    """Bytes of output so far."""
    next_offset: str
    """Where the output goes on (its length, as an offset)."""
    offset: str
    """Where the last announced part starts."""
    text: Optional[str] = None
    """The announced part, in a `job.output` event (text outputs, up to
    64 KiB; else read it from `links.output` at `offset`).
    """
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    """Members of the answer that this version of the SDK does not know."""

    _KEYS: ClassVar[FrozenSet[str]] = frozenset(['bytes', 'next_offset', 'offset', 'text'])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Output:
        """Reads a ``Output`` from its decoded JSON (``ValueError`` if malformed)."""
        return cls(
            bytes=_int(_required(data, 'bytes', 'Output.bytes'), 'Output.bytes'),
            next_offset=_str(_required(data, 'next_offset', 'Output.next_offset'), 'Output.next_offset'),
            offset=_str(_required(data, 'offset', 'Output.offset'), 'Output.offset'),
            text=None if data.get('text') is None else _str(data.get('text'), 'Output.text'),
            extra=_extra(data, cls._KEYS),
        )


@dataclass(frozen=True)
class Job:
    """The job representation (API.md "Job representation")."""

    attempt: int
    created_at: datetime
    id: str
    links: Links
    max_attempts: int
    queue: str
    state: str
    updated_at: datetime
    cancel_requested: Optional[bool] = None
    """True once a cancel was asked for a running job that has not ended yet."""
    error: Optional[JobError] = None
    expires_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    group: Optional[str] = None
    """The group it shares its queue fairly with others by, if given."""
    input: Any = None
    """The job's input: present only where a worker receives the job (lease)."""
    output: Optional[Output] = None
    priority: Optional[int] = None
    """0 to 9: a queue's jobs of a higher priority are leased first."""
    progress: Optional[Progress] = None
    run_at: Optional[datetime] = None
    """When a scheduled job is due (present while it is scheduled)."""
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    """Members of the answer that this version of the SDK does not know."""
    result: Optional[JobResult] = field(default=None, compare=False)
    """The result itself, when ``submit(..., wait=N)`` was answered with it (``200``); otherwise None: read it with ``result(id)``."""

    _KEYS: ClassVar[FrozenSet[str]] = frozenset(['attempt', 'cancel_requested', 'created_at', 'error', 'expires_at', 'finished_at', 'group', 'id', 'input', 'links', 'max_attempts', 'output', 'priority', 'progress', 'queue', 'run_at', 'state', 'updated_at'])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        """Reads a ``Job`` from its decoded JSON (``ValueError`` if malformed)."""
        return cls(
            attempt=_int(_required(data, 'attempt', 'Job.attempt'), 'Job.attempt'),
            created_at=_time(_required(data, 'created_at', 'Job.created_at'), 'Job.created_at'),
            id=_str(_required(data, 'id', 'Job.id'), 'Job.id'),
            links=Links.from_json(_object(_required(data, 'links', 'Job.links'), 'Job.links')),
            max_attempts=_int(_required(data, 'max_attempts', 'Job.max_attempts'), 'Job.max_attempts'),
            queue=_str(_required(data, 'queue', 'Job.queue'), 'Job.queue'),
            state=_str(_required(data, 'state', 'Job.state'), 'Job.state'),
            updated_at=_time(_required(data, 'updated_at', 'Job.updated_at'), 'Job.updated_at'),
            cancel_requested=None if data.get('cancel_requested') is None else _bool(data.get('cancel_requested'), 'Job.cancel_requested'),
            error=None if data.get('error') is None else JobError.from_json(_object(data.get('error'), 'Job.error')),
            expires_at=None if data.get('expires_at') is None else _time(data.get('expires_at'), 'Job.expires_at'),
            finished_at=None if data.get('finished_at') is None else _time(data.get('finished_at'), 'Job.finished_at'),
            group=None if data.get('group') is None else _str(data.get('group'), 'Job.group'),
            input=data.get('input'),
            output=None if data.get('output') is None else Output.from_json(_object(data.get('output'), 'Job.output')),
            priority=None if data.get('priority') is None else _int(data.get('priority'), 'Job.priority'),
            progress=None if data.get('progress') is None else Progress.from_json(_object(data.get('progress'), 'Job.progress')),
            run_at=None if data.get('run_at') is None else _time(data.get('run_at'), 'Job.run_at'),
            extra=_extra(data, cls._KEYS),
        )

    @property
    def is_terminal(self) -> bool:
        """Whether the job has finished (succeeded, failed or canceled)."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        """Whether the job finished with a result."""
        return self.state == "succeeded"


@dataclass(frozen=True)
class JobList:
    """`GET /v1/jobs`."""

    jobs: List[Job]
    next_cursor: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    """Members of the answer that this version of the SDK does not know."""

    _KEYS: ClassVar[FrozenSet[str]] = frozenset(['jobs', 'next_cursor'])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobList:
        """Reads a ``JobList`` from its decoded JSON (``ValueError`` if malformed)."""
        return cls(
            jobs=[Job.from_json(_object(item, 'JobList.jobs[]')) for item in _list(_required(data, 'jobs', 'JobList.jobs'), 'JobList.jobs')],
            next_cursor=None if data.get('next_cursor') is None else _str(data.get('next_cursor'), 'JobList.next_cursor'),
            extra=_extra(data, cls._KEYS),
        )


@dataclass(frozen=True)
class Lease:
    """One leased job."""

    job: Job
    lease_expires_at: datetime
    lease_id: str
    traceparent: Optional[str] = None
    """W3C Trace Context for the work, when the job is in a trace: the
    position of replyd's span of this attempt (or, when replyd makes
    no spans, of the submitter's), for the worker's span to hang below.
    """
    tracestate: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    """Members of the answer that this version of the SDK does not know."""

    _KEYS: ClassVar[FrozenSet[str]] = frozenset(['job', 'lease_expires_at', 'lease_id', 'traceparent', 'tracestate'])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Lease:
        """Reads a ``Lease`` from its decoded JSON (``ValueError`` if malformed)."""
        return cls(
            job=Job.from_json(_object(_required(data, 'job', 'Lease.job'), 'Lease.job')),
            lease_expires_at=_time(_required(data, 'lease_expires_at', 'Lease.lease_expires_at'), 'Lease.lease_expires_at'),
            lease_id=_str(_required(data, 'lease_id', 'Lease.lease_id'), 'Lease.lease_id'),
            traceparent=None if data.get('traceparent') is None else _str(data.get('traceparent'), 'Lease.traceparent'),
            tracestate=None if data.get('tracestate') is None else _str(data.get('tracestate'), 'Lease.tracestate'),
            extra=_extra(data, cls._KEYS),
        )


@dataclass(frozen=True)
class LeaseBatch:
    """The answer to a lease request that named a `batch` size."""

    leases: List[Lease]
    outcomes: Optional[List[OutcomeAnswer]] = None
    """The answers to the request's `outcomes`, in order (absent when it
    had none).
    """
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    """Members of the answer that this version of the SDK does not know."""

    _KEYS: ClassVar[FrozenSet[str]] = frozenset(['leases', 'outcomes'])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeaseBatch:
        """Reads a ``LeaseBatch`` from its decoded JSON (``ValueError`` if malformed)."""
        return cls(
            leases=[Lease.from_json(_object(item, 'LeaseBatch.leases[]')) for item in _list(_required(data, 'leases', 'LeaseBatch.leases'), 'LeaseBatch.leases')],
            outcomes=None if data.get('outcomes') is None else [OutcomeAnswer.from_json(_object(item, 'LeaseBatch.outcomes[]')) for item in _list(data.get('outcomes'), 'LeaseBatch.outcomes')],
            extra=_extra(data, cls._KEYS),
        )


@dataclass(frozen=True)
class LeaseStatus:
    """The answer to heartbeat and progress: whether the worker should stop."""

    cancel_requested: bool
    lease_expires_at: datetime
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    """Members of the answer that this version of the SDK does not know."""

    _KEYS: ClassVar[FrozenSet[str]] = frozenset(['cancel_requested', 'lease_expires_at'])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeaseStatus:
        """Reads a ``LeaseStatus`` from its decoded JSON (``ValueError`` if malformed)."""
        return cls(
            cancel_requested=_bool(_required(data, 'cancel_requested', 'LeaseStatus.cancel_requested'), 'LeaseStatus.cancel_requested'),
            lease_expires_at=_time(_required(data, 'lease_expires_at', 'LeaseStatus.lease_expires_at'), 'LeaseStatus.lease_expires_at'),
            extra=_extra(data, cls._KEYS),
        )


@dataclass(frozen=True)
class Problem:
    """An RFC 9457 problem. Every error replyd answers has this body."""

    detail: str
    status: int
    title: str
    type: str
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    """Members of the answer that this version of the SDK does not know."""

    _KEYS: ClassVar[FrozenSet[str]] = frozenset(['detail', 'status', 'title', 'type'])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Problem:
        """Reads a ``Problem`` from its decoded JSON (``ValueError`` if malformed)."""
        return cls(
            detail=_str(_required(data, 'detail', 'Problem.detail'), 'Problem.detail'),
            status=_int(_required(data, 'status', 'Problem.status'), 'Problem.status'),
            title=_str(_required(data, 'title', 'Problem.title'), 'Problem.title'),
            type=_str(_required(data, 'type', 'Problem.type'), 'Problem.type'),
            extra=_extra(data, cls._KEYS),
        )


@dataclass(frozen=True)
class OutcomeAnswer:
    """What became of one outcome: `status` as the one-job call would have
    answered (200 and the job's `state` after it, or a problem: 404,
    409…). The job itself is not repeated: `GET /v1/jobs/{id}` has it.
    """

    job_id: str
    status: int
    problem: Optional[Problem] = None
    state: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    """Members of the answer that this version of the SDK does not know."""

    _KEYS: ClassVar[FrozenSet[str]] = frozenset(['job_id', 'problem', 'state', 'status'])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutcomeAnswer:
        """Reads a ``OutcomeAnswer`` from its decoded JSON (``ValueError`` if malformed)."""
        return cls(
            job_id=_str(_required(data, 'job_id', 'OutcomeAnswer.job_id'), 'OutcomeAnswer.job_id'),
            status=_int(_required(data, 'status', 'OutcomeAnswer.status'), 'OutcomeAnswer.status'),
            problem=None if data.get('problem') is None else Problem.from_json(_object(data.get('problem'), 'OutcomeAnswer.problem')),
            state=None if data.get('state') is None else _str(data.get('state'), 'OutcomeAnswer.state'),
            extra=_extra(data, cls._KEYS),
        )


class _WebhookSpecRequired(TypedDict):
    url: str


class WebhookSpec(_WebhookSpecRequired, total=False):
    """Where and which events a job's webhook receives (API.md §2)."""

    events: Optional[List[str]]
    jwt: bool


class OutputRequest(TypedDict):
    """What a submission says of its job's output."""

    content_type: str


class _SubmitRequestRequired(TypedDict):
    queue: str


class SubmitRequest(_SubmitRequestRequired, total=False):
    """`POST /v1/jobs`."""

    delay: Optional[float]
    group: Optional[str]
    input: Any
    max_attempts: Optional[int]
    output: Optional[OutputRequest]
    priority: Optional[int]
    run_at: Optional[str]
    timeout: Optional[float]
    ttl: Optional[float]
    webhook: Optional[WebhookSpec]


class LeaseRequest(TypedDict, total=False):
    """`POST /v1/queues/{queue}/lease`."""

    batch: Optional[int]
    lease: Optional[float]
    outcomes: List[Outcome]
    wait: Optional[float]
    worker: Optional[str]


class _HeartbeatRequestRequired(TypedDict):
    lease_id: str


class HeartbeatRequest(_HeartbeatRequestRequired, total=False):
    """`POST /v1/jobs/{id}/heartbeat`."""

    lease: Optional[float]


class _ProgressRequestRequired(TypedDict):
    lease_id: str


class ProgressRequest(_ProgressRequestRequired, total=False):
    """`POST /v1/jobs/{id}/progress`."""

    message: Optional[str]
    percent: Optional[float]


class _CompleteRequestRequired(TypedDict):
    lease_id: str


class CompleteRequest(_CompleteRequestRequired, total=False):
    """`POST /v1/jobs/{id}/complete` with a JSON result. A raw result is sent
    instead as the body with its own content type and the lease id in the
    `Replyd-Lease-Id` header or the `lease_id` query parameter.
    """

    result: Any


class _FailReasonDetailRequired(TypedDict):
    message: str


class FailReasonDetail(_FailReasonDetailRequired, total=False):
    """FailReason as an object."""

    code: Optional[str]


FailReason = Union[str, FailReasonDetail]
"""What a worker says went wrong: a message, or a code and a message."""


class _FailRequestRequired(TypedDict):
    error: FailReason
    lease_id: str


class FailRequest(_FailRequestRequired, total=False):
    """`POST /v1/jobs/{id}/fail`."""

    retry: bool


class _OutcomeRequired(TypedDict):
    job_id: str
    lease_id: str


class Outcome(_OutcomeRequired, total=False):
    """One outcome in a `POST /v1/workers/complete`: a result (`result`, JSON,
    default null) or, with `error`, a failure (`retry` as for `fail`).
    """

    error: Optional[FailReason]
    result: Any
    retry: bool


class OutcomesRequest(TypedDict):
    """`POST /v1/workers/complete`: many jobs' outcomes in one call, each
    fenced by its own lease.
    """

    outcomes: List[Outcome]
