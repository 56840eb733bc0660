"""The client side against a real replyd: submit, get, result, cancel,
delete, list, idempotency, Prefer: wait, errors and retries."""

from __future__ import annotations

import time

import pytest

import replyd
from conftest import MakeServer
from support import ReplydServer


def test_submit_get_result_of_a_demo_job(client: replyd.Client) -> None:
    job = client.submit("demo", {"seconds": 0.2}, ttl=600, max_attempts=2)
    assert job.state == "queued"
    assert job.queue == "demo"
    assert job.max_attempts == 2
    assert job.links.events.startswith(f"/v1/jobs/{job.id}/events")
    done = client.wait(job, timeout=20)
    assert done.state == "succeeded" and done.succeeded and done.is_terminal
    assert done.finished_at is not None and done.finished_at >= done.created_at
    again = client.get(job.id)
    assert again.state == "succeeded" and again.id == job.id
    result = client.result(job)
    assert result.is_json and result.content_type.startswith("application/json")
    assert result.value == {"input": {"seconds": 0.2}, "slept": 0.2}


def test_result_of_an_unfinished_job_is_a_conflict(client: replyd.Client) -> None:
    job = client.submit("work", {"n": 1})
    with pytest.raises(replyd.ConflictError) as caught:
        client.result(job)
    problem = caught.value
    assert problem.status == 409
    assert problem.type.startswith("urn:replyd:problem:")
    assert problem.title and problem.detail
    assert isinstance(problem, replyd.ProblemError) and isinstance(problem, replyd.ReplydError)


def test_unknown_queue_and_job_are_not_found(client: replyd.Client) -> None:
    with pytest.raises(replyd.NotFoundError) as caught:
        client.submit("no-such-queue", {})
    assert "no-such-queue" in caught.value.detail
    with pytest.raises(replyd.NotFoundError):
        client.get("01a24ecf-0a9e-760b-95dc-3de56599cc6a")


def test_cancel_a_queued_job_then_delete_it(client: replyd.Client) -> None:
    job = client.submit("work", {"n": 1})
    canceled = client.cancel(job)
    assert canceled.state == "canceled"
    assert canceled.error is not None and canceled.error.code
    with pytest.raises(replyd.ConflictError):
        client.cancel(job)
    with pytest.raises(replyd.ConflictError):
        client.result(job)
    client.delete(job)
    with pytest.raises((replyd.NotFoundError, replyd.GoneError)):
        client.get(job)


def test_delete_of_an_unfinished_job_is_refused(client: replyd.Client) -> None:
    job = client.submit("work", {"n": 1})
    with pytest.raises(replyd.ConflictError):
        client.delete(job)
    assert client.get(job).state == "queued"


def test_list_pages_and_list_all(client: replyd.Client) -> None:
    ids = [client.submit("work", {"n": n}).id for n in range(5)]
    other = client.submit("other", {"n": 99}).id
    page = client.list(queue="work", limit=2)
    assert len(page.jobs) == 2 and page.next_cursor
    assert [j.id for j in page.jobs] == ids[::-1][:2], "newest first"
    everything = [j.id for j in client.list_all(queue="work", page_size=2)]
    assert everything == ids[::-1]
    assert other not in everything
    queued = list(client.list_all(state="queued"))
    assert {j.id for j in queued} == set(ids) | {other}
    assert list(client.list_all(state="succeeded")) == []


def test_the_same_idempotency_key_returns_the_same_job(client: replyd.Client) -> None:
    first = client.submit("work", {"n": 1}, idempotency_key="order-41")
    second = client.submit("work", {"n": 1}, idempotency_key="order-41")
    assert second.id == first.id
    assert len(client.list(queue="work").jobs) == 1
    fresh = client.submit("work", {"n": 1})
    assert fresh.id != first.id, "each submit without a key gets a fresh one"


def test_the_same_key_with_another_body_is_422(client: replyd.Client) -> None:
    client.submit("work", {"n": 1}, idempotency_key="order-42")
    with pytest.raises(replyd.UnprocessableEntityError) as caught:
        client.submit("work", {"n": 2}, idempotency_key="order-42")
    assert caught.value.status == 422
    assert caught.value.type.startswith("urn:replyd:problem:")


def test_prefer_wait_returns_the_result(client: replyd.Client) -> None:
    job = client.submit("demo", {"seconds": 0.3}, wait=10)
    assert job.state == "succeeded"
    assert job.result is not None and job.result.value == {"input": {"seconds": 0.3}, "slept": 0.3}
    assert client.result(job).body == job.result.body


def test_prefer_wait_that_runs_out_returns_the_pending_job(client: replyd.Client) -> None:
    started = time.monotonic()
    job = client.submit("demo", {"seconds": 5}, wait=1)
    assert 0.9 <= time.monotonic() - started < 4
    assert job.state in ("queued", "running") and job.result is None


def test_extra_fields_reach_the_server(client: replyd.Client) -> None:
    # `output` is in the spec but not a named parameter: it goes through **extra.
    job = client.submit("work", {"n": 1}, output={"content_type": "text/plain"})
    assert job.links.output
    with pytest.raises(replyd.BadRequestError) as caught:
        client.submit("work", {"n": 1}, no_such_member=True)
    assert "no_such_member" in caught.value.detail


def test_webhook_to_loopback_is_refused_without_allow_list(client: replyd.Client) -> None:
    with pytest.raises(replyd.BadRequestError):
        client.submit("work", {}, webhook="http://127.0.0.1:9/hook")


RATE_LIMITED = """
[queues.work]

[limits]
submit_rate = 1
submit_burst = 1
"""


def test_429_is_retried_after_retry_after(make_server: MakeServer) -> None:
    server = make_server(RATE_LIMITED)
    with replyd.Client(server.url) as client:
        client.submit("work", {"n": 1})
        started = time.monotonic()
        second = client.submit("work", {"n": 2})
        waited = time.monotonic() - started
    assert second.state == "queued"
    assert waited >= 0.5, f"the 429's Retry-After was not honoured (waited {waited:.2f}s)"
    with replyd.Client(server.url, retry=replyd.RetryPolicy(max_retries=0)) as impatient:
        with pytest.raises(replyd.RateLimitedError) as caught:
            impatient.submit("work", {"n": 3})
            impatient.submit("work", {"n": 4})
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert caught.value.headers.get("ratelimit")


def test_a_server_that_is_down_is_a_transport_error(server: ReplydServer) -> None:
    url = server.url
    server.kill()
    policy = replyd.RetryPolicy(max_retries=1, backoff=0.01)
    with replyd.Client(url, retry=policy, timeout=2) as client:
        with pytest.raises(replyd.TransportError):
            client.get("01a24ecf-0a9e-760b-95dc-3de56599cc6a")


def test_submit_is_retried_across_a_restart(server: ReplydServer) -> None:
    """A connection refused while replyd restarts is retried; the
    Idempotency-Key makes a repeat return the same job."""
    policy = replyd.RetryPolicy(max_retries=8, backoff=0.2, max_backoff=1.0)
    with replyd.Client(server.url, retry=policy) as client:
        first = client.submit("work", {"n": 1}, idempotency_key="k-restart")
        server.kill()
        import threading

        restarter = threading.Timer(0.3, server.start)
        restarter.start()
        try:
            again = client.submit("work", {"n": 1}, idempotency_key="k-restart")
        finally:
            restarter.join()
        assert again.id == first.id


def test_invalid_base_url_is_refused() -> None:
    with pytest.raises(ValueError):
        replyd.Client("127.0.0.1:8202")
    assert "k-secret" not in repr(replyd.Client("http://127.0.0.1:1", api_key="k-secret"))


def test_an_expired_job_is_gone(client: replyd.Client) -> None:
    job = client.submit("demo", {"seconds": 0}, ttl=0)
    # With no time to live the job is gone the moment it ends: a wait that
    # falls back to polling may find it gone rather than succeeded.
    try:
        assert client.wait(job, timeout=20).state == "succeeded"
    except replyd.GoneError as gone:
        assert "expired" in gone.type
    for read in (client.get, client.result):
        with pytest.raises(replyd.GoneError) as caught:
            read(job)
        assert caught.value.status == 410 and "expired" in caught.value.type


def test_a_body_over_the_limit_is_413(client: replyd.Client) -> None:
    with pytest.raises(replyd.PayloadTooLargeError) as caught:
        client.submit("work", {"blob": "x" * 1_100_000})
    assert caught.value.status == 413
    assert list(client.list_all()) == []
