"""The Python SDK for replyd, an Asynchronous Request-Reply server.

A caller submits jobs and gets their results::

    import replyd

    with replyd.Client("http://127.0.0.1:8202", api_key="k-acme-client") as client:
        job = client.submit("report", {"month": "2024-05"})
        done = client.wait(job, timeout=300)
        print(client.result(done).value)

a worker runs them (:class:`Worker`, or :class:`AsyncWorker`), and a
webhook receiver checks their signatures (:func:`verify_webhook`).
:class:`AsyncClient` is :class:`Client` for asyncio.
"""

import logging

from ._async_client import AsyncClient
from ._async_worker import AsyncJobContext, AsyncWorker
from ._client import Client
from ._errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GoneError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProblemError,
    RateLimitedError,
    ReplydError,
    ServiceUnavailableError,
    StreamError,
    TransportError,
    UnexpectedResponseError,
    UnprocessableEntityError,
    WaitTimeoutError,
)
from ._events import JobEvent
from ._models import (
    JOB_STATES,
    TERMINAL_STATES,
    Job,
    JobError,
    JobList,
    Lease,
    LeaseStatus,
    Links,
    Output,
    Problem,
    Progress,
    WebhookSpec,
)
from ._protocol import RetryPolicy
from ._result import JobResult
from ._version import __version__
from ._webhooks import JwksClient, WebhookEvent, WebhookVerificationError, verify_webhook
from ._worker import JobContext, Worker
from ._worker_common import Permanent

# The SDK logs to the "replyd" logger (retries, a worker's jobs) and never
# prints: without a handler of the application's, nothing is shown.
logging.getLogger("replyd").addHandler(logging.NullHandler())

__all__ = [
    "JOB_STATES",
    "TERMINAL_STATES",
    "AsyncClient",
    "AsyncJobContext",
    "AsyncWorker",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "GoneError",
    "Job",
    "JobError",
    "JobContext",
    "JobEvent",
    "JobList",
    "JobResult",
    "Lease",
    "LeaseStatus",
    "JwksClient",
    "Links",
    "NotFoundError",
    "Output",
    "PayloadTooLargeError",
    "Permanent",
    "PermissionDeniedError",
    "Problem",
    "ProblemError",
    "Progress",
    "RateLimitedError",
    "ReplydError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "StreamError",
    "TransportError",
    "UnexpectedResponseError",
    "UnprocessableEntityError",
    "WaitTimeoutError",
    "WebhookEvent",
    "WebhookSpec",
    "WebhookVerificationError",
    "Worker",
    "__version__",
    "verify_webhook",
]
