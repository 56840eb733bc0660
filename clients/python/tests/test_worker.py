"""The threaded worker loop against a real replyd: batch leases, progress
a client sees, results (JSON and raw), failures with and without retry, a
cancel told to the handler, and a SIGTERM drain in a subprocess."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

import replyd
from support import PATIENCE, RecordingProxy, ReplydServer

SRC = Path(__file__).resolve().parents[1] / "src"


@contextmanager
def running(worker: replyd.Worker) -> Iterator[replyd.Worker]:
    """Runs ``worker`` in a thread for the block; stops it and re-raises
    what ``run`` raised."""
    errors: List[BaseException] = []

    def run() -> None:
        try:
            worker.run(handle_signals=False)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=PATIENCE)
        assert not thread.is_alive(), "the worker did not stop"
    if errors:
        raise errors[0]


def test_batch_leases_run_concurrently_and_complete(server: ReplydServer) -> None:
    proxy = RecordingProxy(server.url)
    both_running = threading.Barrier(2, timeout=PATIENCE)
    seen: "queue.Queue[int]" = queue.Queue()

    def handler(ctx: replyd.JobContext) -> Dict[str, Any]:
        if ctx.input["n"] < 2:
            both_running.wait()  # the first two run at the same time
        seen.put(ctx.input["n"])
        return {"double": ctx.input["n"] * 2, "attempt": ctx.attempt}

    try:
        with replyd.Client(proxy.url) as client:
            jobs = [client.submit("work", {"n": n}) for n in range(5)]
            worker = replyd.Worker(client, "work", handler, concurrency=2, batch=2, wait_seconds=1)
            with running(worker):
                done = [client.wait(job, timeout=PATIENCE) for job in jobs]
            assert [j.state for j in done] == ["succeeded"] * 5
            assert [client.result(j).value for j in jobs] == [
                {"double": n * 2, "attempt": 1} for n in range(5)
            ]
        assert sorted(seen.queue) == list(range(5))
        leases = proxy.bodies("POST", "/v1/queues/work/lease")
        assert leases and all(1 <= body["batch"] <= 2 for body in leases)
        assert any(body["batch"] == 2 for body in leases), "leased in batches"
        assert all(body["lease"] == 30 and body["wait"] == 1 for body in leases)
    finally:
        proxy.close()


def test_progress_is_visible_to_a_client(client: replyd.Client) -> None:
    release = threading.Event()

    def handler(ctx: replyd.JobContext) -> str:
        ctx.progress(30, "a third")
        assert release.wait(PATIENCE)
        return "done"

    job = client.submit("work", {})
    with running(replyd.Worker(client, "work", handler, wait_seconds=1)):
        for event in client.events(job):
            if event.event == "job.progress":
                assert event.job.state == "running"
                assert event.job.progress is not None
                assert (event.job.progress.percent, event.job.progress.message) == (30, "a third")
                now = client.get(job)
                assert now.progress is not None and now.progress.percent == 30
                release.set()
            if event.is_terminal:
                assert event.job.state == "succeeded"
        assert release.is_set()
        assert client.result(job).value == "done"


@pytest.mark.parametrize(
    "returned, content_type, body",
    [
        (replyd.JobResult("image/png", b"\x89PNG\r\n\x1a\n..."), "image/png", b"\x89PNG\r\n\x1a\n..."),
        (b"\x00\x01raw", "application/octet-stream", b"\x00\x01raw"),
        ([1, "two", None], "application/json", b'[1,"two",null]'),
    ],
)
def test_results_of_any_type(
    client: replyd.Client, returned: Any, content_type: str, body: bytes
) -> None:
    job = client.submit("work", {})
    with running(replyd.Worker(client, "work", lambda ctx: returned, wait_seconds=1)):
        assert client.wait(job, timeout=PATIENCE).state == "succeeded"
    result = client.result(job)
    assert result.content_type.split(";")[0] == content_type
    assert result.body.replace(b" ", b"") == body


def test_an_exception_fails_the_attempt_and_it_is_retried(client: replyd.Client) -> None:
    attempts: List[int] = []

    def handler(ctx: replyd.JobContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ValueError("flaky upstream")
        return "second time lucky"

    job = client.submit("work", {})
    with running(replyd.Worker(client, "work", handler, wait_seconds=1)):
        done = client.wait(job, timeout=PATIENCE)
    assert done.state == "succeeded" and done.attempt == 2
    assert attempts == [1, 2]
    history = [e.event for e in client.events(job)]
    assert "job.retrying" in history


def test_permanent_fails_without_a_retry(client: replyd.Client) -> None:
    def handler(ctx: replyd.JobContext) -> None:
        raise replyd.Permanent("no month given", code="bad_input")

    job = client.submit("work", {}, max_attempts=3)
    with running(replyd.Worker(client, "work", handler, wait_seconds=1)):
        done = client.wait(job, timeout=PATIENCE)
    assert done.state == "failed" and done.attempt == 1
    assert done.error is not None
    assert (done.error.code, done.error.message) == ("bad_input", "no month given")


def test_a_canceled_job_s_handler_is_told(client: replyd.Client) -> None:
    started = threading.Event()
    told: "queue.Queue[Any]" = queue.Queue()

    def handler(ctx: replyd.JobContext) -> str:
        started.set()
        told.put(ctx.stopped.wait(PATIENCE))
        told.put((ctx.cancel_requested, ctx.stop_reason))
        return "too late"

    job = client.submit("work", {})
    with running(replyd.Worker(client, "work", handler, lease_seconds=1.5, wait_seconds=1)):
        assert started.wait(PATIENCE)
        asked = client.cancel(job)
        assert asked.state == "running" and asked.cancel_requested
        assert told.get(timeout=PATIENCE) is True, "the handler was told within a heartbeat"
        assert told.get(timeout=PATIENCE) == (True, "canceled")
        done = client.wait(job, timeout=PATIENCE)
    assert done.state == "canceled"
    with pytest.raises(replyd.ConflictError):
        client.result(job)


def test_a_handler_that_outlives_its_lease_keeps_it_by_heartbeats(client: replyd.Client) -> None:
    def handler(ctx: replyd.JobContext) -> str:
        assert not ctx.stopped.wait(2.5), "not told to stop"
        return "slow but fine"

    job = client.submit("work", {})
    with running(replyd.Worker(client, "work", handler, lease_seconds=1, wait_seconds=1)):
        done = client.wait(job, timeout=PATIENCE)
    assert done.state == "succeeded" and done.attempt == 1


WORKER_SCRIPT = """
import logging, sys, replyd

logging.basicConfig(level=logging.INFO, stream=sys.stderr)

def handler(ctx):
    print("started", ctx.job.id, flush=True)
    sys.stdin.readline()        # the test says when the job may finish
    return {"drained": True}

with replyd.Client(sys.argv[1]) as client:
    replyd.Worker(client, "work", handler, concurrency=1, wait_seconds=5).run()
print("exited", flush=True)
"""


def _lines(stream: Any) -> "queue.Queue[str]":
    lines: "queue.Queue[str]" = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line.strip())
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_sigterm_drains_a_worker_process(client: replyd.Client, server: ReplydServer, tmp_path: Path) -> None:
    first = client.submit("work", {"n": 1})
    second = client.submit("work", {"n": 2})
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen(
        [sys.executable, str(script), server.url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    try:
        out = _lines(proc.stdout)
        assert out.get(timeout=PATIENCE) == f"started {first.id}"
        proc.send_signal(signal.SIGTERM)
        # The job is still running: the worker waits for it.
        assert client.get(first).state == "running"
        assert proc.poll() is None
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert out.get(timeout=PATIENCE) == "exited"
        assert proc.wait(timeout=PATIENCE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = client.get(first)
    assert done.state == "succeeded"
    assert client.result(first).value == {"drained": True}
    untouched = client.get(second)
    assert (untouched.state, untouched.attempt) == ("queued", 0), "no lease after SIGTERM"


def test_stop_aborts_a_held_lease_request(client: replyd.Client) -> None:
    worker = replyd.Worker(client, "work", lambda ctx: None, wait_seconds=30)
    with running(worker):
        # Let the lease request reach the server, where it is held for up to 30 s.
        threading.Event().wait(0.3)
        started = time.monotonic()
    took = time.monotonic() - started
    assert took < 5, f"stop() took {took:.1f}s: it waited for the (30 s) long poll"


def test_settings_are_checked(client: replyd.Client) -> None:
    handler: Callable[[replyd.JobContext], Any] = lambda ctx: None  # noqa: E731
    for bad in ({"concurrency": 0}, {"lease_seconds": 0}, {"batch": 101}, {"wait_seconds": 61}):
        with pytest.raises(ValueError):
            replyd.Worker(client, "work", handler, **bad)
