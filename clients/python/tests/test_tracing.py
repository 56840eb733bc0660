"""OpenTelemetry: submit carries the caller's trace context (W3C
traceparent), and a worker runs its handler in a span
``replyd.process <queue>`` whose parent is the lease's traceparent."""

from __future__ import annotations

import threading
from typing import Any, Dict, Iterator, List

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import replyd
from support import PATIENCE, RecordingProxy, ReplydServer
from test_worker import running

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> Iterator[None]:
    """Finished spans kept in memory. The global provider can be set once
    per process: when another test set it first, the exporter joins it."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        current = trace.get_tracer_provider()
    assert isinstance(current, TracerProvider)
    current.add_span_processor(SimpleSpanProcessor(EXPORTER))
    yield
    EXPORTER.clear()


@pytest.fixture
def proxy(server: ReplydServer) -> Iterator[RecordingProxy]:
    recording = RecordingProxy(server.url)
    yield recording
    recording.close()


def _trace_and_span(span: Any) -> str:
    """``00-TRACE-SPAN`` of a span (a traceparent without its flags)."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}"


def test_submit_sends_the_current_span_s_context(proxy: RecordingProxy) -> None:
    tracer = trace.get_tracer("test")
    with replyd.Client(proxy.url) as client:
        with tracer.start_as_current_span("checkout") as span:
            client.submit("work", {"n": 1})
            expected = _trace_and_span(span)
        client.submit("work", {"n": 2})  # outside any span: nothing to send
        client.submit("work", {"n": 3}, traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
                      tracestate="vendor=1")
    sent = proxy.seen("POST", "/v1/jobs")
    assert sent[0]["traceparent"].rsplit("-", 1)[0] == expected
    assert "traceparent" not in sent[1]
    assert sent[2]["traceparent"] == "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    assert sent[2]["tracestate"] == "vendor=1"


def test_the_handler_runs_in_a_process_span(client: replyd.Client) -> None:
    inside: List[Any] = []

    def handler(ctx: replyd.JobContext) -> str:
        inside.append(trace.get_current_span())
        if ctx.input.get("fail"):
            raise ValueError("broken")
        return "ok"

    job = client.submit("work", {})
    failing = client.submit("work", {"fail": True}, max_attempts=1)
    with running(replyd.Worker(client, "work", handler, wait_seconds=1)):
        assert client.wait(job, timeout=PATIENCE).state == "succeeded"
        assert client.wait(failing, timeout=PATIENCE).state == "failed"
    spans = {s.attributes["messaging.message.id"]: s for s in EXPORTER.get_finished_spans()
             if s.name == "replyd.process work"}
    span = spans[job.id]
    assert span.kind == trace.SpanKind.CONSUMER
    assert span.attributes["messaging.destination.name"] == "work"
    assert span.attributes["replyd.job.attempt"] == 1
    assert inside[0].get_span_context().span_id == span.context.span_id
    broken = spans[failing.id]
    assert broken.status.status_code == trace.StatusCode.ERROR
    assert any(e.name == "exception" for e in broken.events)


def _lease_has_traceparent(server: ReplydServer) -> bool:
    live: Dict[str, Any] = httpx.get(server.url + "/openapi.json").json()
    return "traceparent" in live["components"]["schemas"]["Lease"].get("properties", {})


def test_the_process_span_continues_the_submitter_s_trace(server: ReplydServer) -> None:
    if not _lease_has_traceparent(server):
        pytest.skip("this replyd's /openapi.json has no traceparent on leases yet")
    tracer = trace.get_tracer("test")
    done = threading.Event()
    with replyd.Client(server.url) as client:
        with tracer.start_as_current_span("caller") as caller:
            job = client.submit("work", {})
        lease = client.lease("work", wait=5)
        assert lease is not None and lease.job.id == job.id
        assert lease.traceparent is not None
        assert lease.traceparent.split("-")[1] == f"{caller.get_span_context().trace_id:032x}"
        client.fail(lease.job, lease.lease_id, "let the worker take it", retry=True)
        with running(replyd.Worker(client, "work", lambda ctx: done.set(), wait_seconds=1)):
            assert client.wait(job, timeout=PATIENCE).state == "succeeded"
    span = next(s for s in EXPORTER.get_finished_spans()
                if s.name == "replyd.process work" and s.attributes["messaging.message.id"] == job.id)
    assert span.context.trace_id == caller.get_span_context().trace_id
    assert span.parent is not None and span.parent.is_remote
