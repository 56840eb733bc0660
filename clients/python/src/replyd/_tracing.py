"""OpenTelemetry, when it is installed (``pip install replyd[otel]``).

Nothing here needs it: without ``opentelemetry-api`` submits carry no
``traceparent`` unless given one, and handlers run outside any span.

- :func:`current_headers`: the current span's context as W3C Trace
  Context headers, for ``submit`` to send (so the job's trace continues
  the caller's).
- :func:`process_span`: the span a worker runs a handler in,
  ``replyd.process <queue>``, whose parent is the lease's ``traceparent``
  (replyd's span for that attempt).
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR: Optional[TraceContextTextMapPropagator] = TraceContextTextMapPropagator()
except ImportError:  # pragma: no cover - exercised where OpenTelemetry is absent
    _PROPAGATOR = None

from ._version import __version__


def available() -> bool:
    """Whether ``opentelemetry-api`` could be imported."""
    return _PROPAGATOR is not None


def current_headers() -> Dict[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span, if any."""
    carrier: Dict[str, str] = {}
    if _PROPAGATOR is not None:
        _PROPAGATOR.inject(carrier)
    return carrier


@contextlib.contextmanager
def process_span(
    queue: str,
    job_id: str,
    attempt: int,
    traceparent: Optional[str],
    tracestate: Optional[str],
) -> Iterator[None]:
    """Runs the body inside the span ``replyd.process <queue>`` (a consumer
    span), child of ``traceparent`` when the lease carried one. An
    exception escaping the body is recorded on the span and re-raised."""
    if _PROPAGATOR is None:
        yield
        return
    carrier: Dict[str, str] = {}
    if traceparent:
        carrier["traceparent"] = traceparent
        if tracestate:
            carrier["tracestate"] = tracestate
    parent = _PROPAGATOR.extract(carrier)
    tracer = _trace.get_tracer("replyd", __version__)
    with tracer.start_as_current_span(
        f"replyd.process {queue}",
        context=parent,
        kind=_trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "replyd",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": job_id,
            "replyd.job.attempt": attempt,
        },
    ):
        yield
