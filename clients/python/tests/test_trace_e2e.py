"""One trace from a submitter through a Python worker to the webhook
receiver (issue 17): replyd exports its spans over OTLP/HTTP (JSON) to a
collector this test runs on 127.0.0.1, the worker's span is recorded by
the OpenTelemetry SDK's in-memory exporter, and the receiver sees the
``traceparent`` replyd sends. Every span must be in the submitter's trace,
each hanging where it should.

Needs a replyd built with the ``otel`` feature (``cargo test
--all-features`` builds one); with another, replyd refuses the
``[telemetry]`` section and the test skips, saying so.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

import replyd
from support import PATIENCE, ReplydServer, WebhookReceiver, _Handler, _Server

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace as otel_trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SUBMITTER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SUBMITTER_SPAN}-01"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Collector(_Server):
    """An OTLP/HTTP collector: keeps every span POSTed to /v1/traces."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle(self, request: _Handler) -> None:
        body = json.loads(request._body() or b"{}")
        with self.lock:
            if request.path == "/v1/traces":
                for rs in body.get("resourceSpans", []):
                    for ss in rs.get("scopeSpans", []):
                        self.spans.extend(ss.get("spans", []))
        request._answer(200, {"content-type": "application/json"}, b"{}")

    def by_name(self) -> Dict[str, List[Dict[str, Any]]]:
        with self.lock:
            out: Dict[str, List[Dict[str, Any]]] = {}
            for s in self.spans:
                out.setdefault(s["name"], []).append(s)
            return out

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def worker_spans() -> Any:
    """The OpenTelemetry SDK, recording this process's spans in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The global provider can be set once per process; later tests reuse it.
    otel_trace.set_tracer_provider(provider)
    current = otel_trace.get_tracer_provider()
    if current is not provider:
        current.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    yield exporter
    exporter.clear()


def test_one_trace_runs_from_the_submitter_through_a_python_worker_to_the_webhook(
    tmp_path: Path, worker_spans: InMemorySpanExporter
) -> None:
    collector = Collector()
    hooks = WebhookReceiver()
    config = f"""
[queues.work]
[webhooks]
secret = "{SECRET}"
allow_networks = ["127.0.0.0/8"]
[telemetry]
otlp_endpoint = "{collector.url}"
"""
    server = ReplydServer(tmp_path, config)
    try:
        try:
            server.start()
        except Exception:
            log = server.log.read_text() if server.log.exists() else ""
            if "without the `otel` feature" in log:
                pytest.skip("this replyd was built without the otel feature (cargo build --features otel)")
            raise
        with replyd.Client(server.url, timeout=30) as client:
            job = client.submit("work", {"n": 1}, webhook=hooks.url, traceparent=TRACEPARENT)

            seen: Dict[str, Any] = {}

            def handler(ctx: replyd.JobContext) -> Any:
                seen["span"] = otel_trace.get_current_span().get_span_context()
                return {"ok": True}

            worker = replyd.Worker(client, "work", handler, wait_seconds=1)
            thread = threading.Thread(target=lambda: worker.run(handle_signals=False), daemon=True)
            thread.start()
            done = client.wait(job.id, timeout=PATIENCE)
            worker.stop()
            thread.join(PATIENCE)
            assert done.state == "succeeded", done

        headers, _ = hooks.next()
        to_receiver = headers["traceparent"]
        assert to_receiver.startswith(f"00-{TRACE_ID}-"), to_receiver

        names = ["replyd.submit", "replyd.queue_wait", "replyd.attempt", "replyd.job", "replyd.deliver"]
        deadline = time.monotonic() + PATIENCE
        while not all(n in collector.by_name() for n in names):
            assert time.monotonic() < deadline, f"spans so far: {sorted(collector.by_name())}"
            time.sleep(0.1)
        spans = collector.by_name()
        one = {}
        for name in names:
            assert len(spans[name]) == 1, (name, spans[name])
            one[name] = spans[name][0]
            assert one[name]["traceId"] == TRACE_ID, name
        job_span = one["replyd.job"]["spanId"]
        assert one["replyd.job"]["parentSpanId"] == SUBMITTER_SPAN
        for name in names:
            if name != "replyd.job":
                assert one[name]["parentSpanId"] == job_span, name

        # The worker: the lease told it replyd's attempt span, and its own
        # span (the SDK's) is that span's child, in the same trace.
        attempt_span = one["replyd.attempt"]["spanId"]
        finished = [s for s in worker_spans.get_finished_spans() if s.name == "replyd.process work"]
        assert len(finished) == 1, worker_spans.get_finished_spans()
        mine = finished[0]
        assert format(mine.context.trace_id, "032x") == TRACE_ID
        assert mine.parent is not None and format(mine.parent.span_id, "016x") == attempt_span
        assert seen["span"].span_id == mine.context.span_id, "the handler ran inside it"

        # The receiver: its parent is replyd's delivery span.
        assert to_receiver == f"00-{TRACE_ID}-{one['replyd.deliver']['spanId']}-01"
    finally:
        server.stop()
        hooks.close()
        collector.close()
