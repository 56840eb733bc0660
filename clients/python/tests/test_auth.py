"""API keys, roles and tenants, and job tokens, as the SDK surfaces them."""

from __future__ import annotations

import pytest

import replyd
from conftest import MakeServer
from support import RecordingProxy, ReplydServer

KEYS = """
[queues.work]

[[api_keys]]
key = "k-acme-client"
tenant = "acme"
role = "client"

[[api_keys]]
key = "k-acme-worker"
tenant = "acme"
role = "worker"

[[api_keys]]
key = "k-globex-client"
tenant = "globex"
role = "client"
"""


@pytest.fixture
def keyed(make_server: MakeServer) -> ReplydServer:
    return make_server(KEYS)


def test_a_client_key_cannot_lease(keyed: ReplydServer) -> None:
    with replyd.Client(keyed.url, "k-acme-client") as client:
        with pytest.raises(replyd.PermissionDeniedError) as caught:
            client.lease("work", wait=0)
        assert caught.value.status == 403
        assert caught.value.detail, "the problem says why"
        worker = replyd.Worker(client, "work", lambda ctx: None, wait_seconds=1)
        with pytest.raises(replyd.PermissionDeniedError):
            worker.run(handle_signals=False)


def test_missing_or_unknown_keys_are_401(keyed: ReplydServer) -> None:
    for key in (None, "k-nobody"):
        with replyd.Client(keyed.url, key) as client:
            with pytest.raises(replyd.AuthenticationError) as caught:
                client.submit("work", {})
            assert caught.value.status == 401


def test_keys_see_only_their_tenant_s_jobs(keyed: ReplydServer) -> None:
    with replyd.Client(keyed.url, "k-acme-client") as acme, replyd.Client(
        keyed.url, "k-globex-client"
    ) as globex:
        job = acme.submit("work", {"n": 1})
        with pytest.raises(replyd.NotFoundError):
            globex.get(job.id)
        assert [j.id for j in globex.list_all()] == []
        assert [j.id for j in acme.list_all()] == [job.id]


def test_a_worker_key_works_and_a_job_token_follows_the_job(keyed: ReplydServer) -> None:
    with replyd.Client(keyed.url, "k-acme-client") as client, replyd.Client(
        keyed.url, "k-acme-worker"
    ) as worker_client, replyd.Client(keyed.url) as keyless:
        job = client.submit("work", {"n": 1})
        lease = worker_client.lease("work", wait=5)
        assert lease is not None and lease.job.input == {"n": 1}
        worker_client.complete(lease.job, lease.lease_id, {"ok": True})
        # Given the job itself, wait() follows its links, whose job token
        # is enough: this client has no key.
        done = keyless.wait(job, timeout=10)
        assert done.state == "succeeded"
        assert [e.event for e in keyless.events(job)][-1] == "job.succeeded"
        # The key holder follows it by id (and by its links, key and token both sent).
        assert client.wait(job.id, timeout=10).state == "succeeded"
        assert client.wait(job, timeout=10).state == "succeeded"
        with pytest.raises(replyd.AuthenticationError):
            keyless.get(job.id)


def test_a_job_token_also_polls_where_events_do_not_stream(keyed: ReplydServer) -> None:
    proxy = RecordingProxy(keyed.url, block_events=True)
    try:
        with replyd.Client(keyed.url, "k-acme-client") as client, replyd.Client(
            keyed.url, "k-acme-worker"
        ) as worker_client, replyd.Client(proxy.url) as keyless:
            job = client.submit("work", {"n": 1})
            lease = worker_client.lease("work", wait=5)
            assert lease is not None
            worker_client.complete(lease.job, lease.lease_id, "done")
            assert keyless.wait(job, timeout=10).state == "succeeded"
        polls = proxy.seen("GET", f"/v1/jobs/{job.id}?access_token=jt_")
        assert polls and all("authorization" not in h for h in polls)
    finally:
        proxy.close()
