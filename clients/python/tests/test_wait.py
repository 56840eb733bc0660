"""Following a job: Server-Sent Events, exact resume across a server
restart, and the polling fallback where a proxy does not stream."""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator, List

import pytest

import replyd
from support import PATIENCE, RecordingProxy, ReplydServer


@pytest.fixture
def blocking_proxy(server: ReplydServer) -> Iterator[RecordingProxy]:
    """A proxy to ``server`` that answers event streams with an HTML page."""
    proxy = RecordingProxy(server.url, block_events=True)
    yield proxy
    proxy.close()


def _follow(client: replyd.Client, job: replyd.Job) -> "queue.Queue[object]":
    """Follows ``job``'s events in a thread; each event (then None, or the
    error) goes to the returned queue."""
    out: "queue.Queue[object]" = queue.Queue()

    def run() -> None:
        try:
            for event in client.events(job):
                out.put(event)
            out.put(None)
        except Exception as e:  # noqa: BLE001 - handed to the test
            out.put(e)

    threading.Thread(target=run, daemon=True).start()
    return out


def _next_event(events: "queue.Queue[object]") -> replyd.JobEvent:
    item = events.get(timeout=PATIENCE)
    assert isinstance(item, replyd.JobEvent), item
    return item


def test_events_replay_history_then_go_live(client: replyd.Client) -> None:
    job = client.submit("work", {"n": 1})
    events = _follow(client, job)
    accepted = _next_event(events)
    assert (accepted.event, accepted.job.state) == ("job.accepted", "queued")
    lease = client.lease("work", lease_seconds=30, wait=5)
    assert lease is not None and lease.job.id == job.id
    assert _next_event(events).event == "job.started"
    client.progress(job, lease.lease_id, 40, "page 4 of 10")
    progress = _next_event(events)
    assert progress.event == "job.progress"
    assert progress.job.progress is not None and progress.job.progress.percent == 40
    assert progress.job.progress.message == "page 4 of 10"
    client.complete(job, lease.lease_id, {"pages": 10})
    done = _next_event(events)
    assert done.event == "job.succeeded" and done.is_terminal
    assert events.get(timeout=PATIENCE) is None, "the stream ends after the terminal event"
    ids = [accepted.id, progress.id, done.id]
    assert ids == sorted(ids) and len(set(ids)) == 3

    history = list(client.events(job.id))
    assert [e.event for e in history] == ["job.accepted", "job.started", "job.progress", "job.succeeded"]
    after = list(client.events(job.id, after=history[1].id))
    assert [e.id for e in after] == [e.id for e in history[2:]]
    assert list(client.events(job.id, after=history[-1].id)) == [], "204 after the end"


def test_wait_follows_events_to_the_end(client: replyd.Client) -> None:
    job = client.submit("demo", {"seconds": 1})
    started = time.monotonic()
    done = client.wait(job.id, timeout=20)
    assert done.state == "succeeded"
    assert 0.9 <= time.monotonic() - started < 5


def test_wait_gives_up_after_its_timeout(client: replyd.Client) -> None:
    job = client.submit("work", {"n": 1})
    started = time.monotonic()
    with pytest.raises(replyd.WaitTimeoutError) as caught:
        client.wait(job, timeout=0.7)
    took = time.monotonic() - started
    assert 0.6 <= took < 3, took
    assert caught.value.job is not None and caught.value.job.state == "queued"
    assert isinstance(caught.value, TimeoutError)


def test_events_of_an_unknown_job_are_not_found(client: replyd.Client) -> None:
    with pytest.raises(replyd.NotFoundError):
        list(client.events("01a24ecf-0a9e-760b-95dc-3de56599cc6a"))


def test_wait_polls_where_the_proxy_does_not_stream(
    client: replyd.Client, blocking_proxy: RecordingProxy
) -> None:
    job = client.submit("work", {"n": 1})
    lease = client.lease("work", lease_seconds=30, wait=5)
    assert lease is not None

    def finish_later() -> None:
        time.sleep(0.8)  # the job's work, while the waiter long polls
        client.complete(job, lease.lease_id, {"ok": True})

    threading.Thread(target=finish_later, daemon=True).start()
    with replyd.Client(blocking_proxy.url) as through_proxy:
        started = time.monotonic()
        done = through_proxy.wait(job.id, timeout=20)
        took = time.monotonic() - started
        with pytest.raises(replyd.StreamError):
            list(through_proxy.events(job.id))
    assert done.state == "succeeded"
    assert took < 5, f"a long poll should return when the job changes, took {took:.1f}s"
    streams = blocking_proxy.seen("GET", f"/v1/jobs/{job.id}/events")
    assert len(streams) == 2, "one try per call: an HTML answer is not retried"
    polls = blocking_proxy.seen("GET", f"/v1/jobs/{job.id}")
    polls = [h for h in polls if "accept" not in h or "event-stream" not in h["accept"]]
    assert polls, "wait() fell back to polling the job"
    assert any("if-none-match" in h and h.get("prefer", "").startswith("wait=") for h in polls), (
        "long polling with the job's ETag"
    )


def test_wait_by_polling_times_out(client: replyd.Client, blocking_proxy: RecordingProxy) -> None:
    job = client.submit("work", {"n": 1})
    with replyd.Client(blocking_proxy.url) as through_proxy:
        started = time.monotonic()
        with pytest.raises(replyd.WaitTimeoutError) as caught:
            through_proxy.wait(job.id, timeout=1.5)
        assert 1.4 <= time.monotonic() - started < 4
    assert caught.value.job is not None and caught.value.job.id == job.id


def test_events_resume_exactly_across_a_server_restart(server: ReplydServer) -> None:
    """replyd is killed mid-job and started again on the same port and
    database: the follower reconnects with Last-Event-ID and sees every
    event once, in order, including one made while it was away."""
    policy = replyd.RetryPolicy(max_retries=8, backoff=0.1, max_backoff=0.5)
    with replyd.Client(server.url, retry=policy) as client:
        job = client.submit("work", {"n": 1})
        lease = client.lease("work", lease_seconds=120, wait=5)
        assert lease is not None
        client.progress(job, lease.lease_id, 10, "before the crash")
        events = _follow(client, job)
        seen: List[replyd.JobEvent] = []
        while not (seen and seen[-1].event == "job.progress"):
            seen.append(_next_event(events))

        server.kill()
        server.start()
        client.progress(job, lease.lease_id, 50, "after the restart")
        client.progress(job, lease.lease_id, 90, "nearly done")
        client.complete(job, lease.lease_id, {"ok": True})
        while not seen[-1].is_terminal:
            seen.append(_next_event(events))
        assert events.get(timeout=PATIENCE) is None

        history = list(client.events(job))
    assert [e.id for e in seen] == [e.id for e in history], "nothing lost, nothing repeated"
    assert [e.event for e in seen] == [
        "job.accepted", "job.started", "job.progress", "job.progress", "job.progress", "job.succeeded",
    ]
    messages = [e.job.progress.message for e in seen if e.event == "job.progress" and e.job.progress]
    assert messages == ["before the crash", "after the restart", "nearly done"]


def test_the_server_s_retry_sets_the_pause_before_reconnecting(
    client: replyd.Client, server: ReplydServer
) -> None:
    """The stream opens with ``retry:`` (200 ms in the tests' config): a
    follower waits that long after a dropped connection, doubling after
    each further failure in a row, and a job event resets the count."""
    import httpx
    from httpx_sse import EventSource

    from replyd._events import EventCursor

    job = client.submit("work", {"n": 1})
    cursor = EventCursor()
    assert cursor.pause() == 0
    with httpx.stream("GET", f"{server.url}/v1/jobs/{job.id}/events", headers=cursor.headers()) as r:
        frames = EventSource(r).iter_sse()
        first = next(frames)
        assert first.retry == 200
        assert cursor.feed(first) is None
        accepted = cursor.feed(next(frames))
    assert accepted is not None and accepted.event == "job.accepted"
    assert cursor.headers()["Last-Event-ID"] == str(accepted.id)
    cursor.broke(OSError("dropped"))
    assert cursor.pause() == 0.2
    cursor.broke(OSError("refused"))
    assert cursor.pause() == 0.4
    with pytest.raises(replyd.StreamError):
        for _ in range(10):
            cursor.broke(OSError("still refused"))
    assert cursor.done
