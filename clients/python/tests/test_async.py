"""AsyncClient and AsyncWorker against a real replyd (each test runs its
own event loop with asyncio.run)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, List, TypeVar

import pytest

import replyd
from support import PATIENCE, RecordingProxy, ReplydServer

T = TypeVar("T")


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), 60))


def test_submit_get_result_list_cancel_delete(server: ReplydServer) -> None:
    async def test() -> None:
        async with replyd.AsyncClient(server.url) as client:
            job = await client.submit("demo", {"seconds": 0.2})
            assert (await client.get(job.id)).id == job.id
            done = await client.wait(job, timeout=20)
            assert done.state == "succeeded"
            assert (await client.result(job)).value == {"input": {"seconds": 0.2}, "slept": 0.2}
            queued = await client.submit("work", {"n": 1})
            with pytest.raises(replyd.ConflictError):
                await client.result(queued)
            assert (await client.cancel(queued)).state == "canceled"
            await client.delete(queued)
            with pytest.raises((replyd.NotFoundError, replyd.GoneError)):
                await client.get(queued)
            ids = [j.id async for j in client.list_all(page_size=1)]
            assert ids == [job.id]
            page = await client.list(queue="demo", limit=5)
            assert [j.id for j in page.jobs] == [job.id]

    run(test)


def test_idempotency_and_prefer_wait(server: ReplydServer) -> None:
    async def test() -> None:
        async with replyd.AsyncClient(server.url) as client:
            first = await client.submit("work", {"n": 1}, idempotency_key="k1")
            assert (await client.submit("work", {"n": 1}, idempotency_key="k1")).id == first.id
            with pytest.raises(replyd.UnprocessableEntityError):
                await client.submit("work", {"n": 2}, idempotency_key="k1")
            fast = await client.submit("demo", {"seconds": 0.1}, wait=10)
            assert fast.state == "succeeded" and fast.result is not None
            assert fast.result.value == {"input": {"seconds": 0.1}, "slept": 0.1}

    run(test)


def test_events_wait_and_timeout(server: ReplydServer) -> None:
    async def test() -> None:
        async with replyd.AsyncClient(server.url) as client:
            job = await client.submit("work", {"n": 1})
            with pytest.raises(replyd.WaitTimeoutError) as caught:
                started = time.monotonic()
                await client.wait(job, timeout=0.5)
            assert time.monotonic() - started < 4
            assert caught.value.job is not None and caught.value.job.state == "queued"
            lease = await client.lease("work", wait=5)
            assert lease is not None
            await client.progress(job, lease.lease_id, 20, "a fifth")
            await client.complete(job, lease.lease_id, {"ok": True})
            events = [e async for e in client.events(job)]
            assert [e.event for e in events] == [
                "job.accepted", "job.started", "job.progress", "job.succeeded",
            ]
            resumed = [e.id async for e in client.events(job.id, after=events[1].id)]
            assert resumed == [e.id for e in events[2:]]

    run(test)


def test_polling_fallback(server: ReplydServer) -> None:
    proxy = RecordingProxy(server.url, block_events=True)

    async def test() -> None:
        async with replyd.AsyncClient(proxy.url) as client:
            job = await client.submit("demo", {"seconds": 0.5})
            assert (await client.wait(job.id, timeout=20)).state == "succeeded"
            with pytest.raises(replyd.StreamError):
                [e async for e in client.events(job.id)]

    try:
        run(test)
        assert proxy.seen("GET", "/v1/jobs/") and len(proxy.seen("GET", "/v1/jobs/")) >= 3
    finally:
        proxy.close()


def test_events_resume_across_a_restart(server: ReplydServer) -> None:
    """A live stream broken by a crash of replyd resumes (Last-Event-ID)
    once it is back on the same port and database: nothing lost or repeated."""

    async def test() -> None:
        policy = replyd.RetryPolicy(max_retries=8, backoff=0.1, max_backoff=0.5)
        async with replyd.AsyncClient(server.url, retry=policy) as client:
            job = await client.submit("work", {"n": 1})
            lease = await client.lease("work", lease_seconds=120, wait=5)
            assert lease is not None
            arrived: "asyncio.Queue[replyd.JobEvent]" = asyncio.Queue()

            async def follow() -> None:
                async for event in client.events(job):
                    await arrived.put(event)

            following = asyncio.ensure_future(follow())
            seen = [await asyncio.wait_for(arrived.get(), PATIENCE) for _ in range(2)]
            assert [e.event for e in seen] == ["job.accepted", "job.started"]
            await asyncio.get_running_loop().run_in_executor(None, server.restart)
            await client.progress(job, lease.lease_id, 50, "after the restart")
            await client.complete(job, lease.lease_id, "done")
            await asyncio.wait_for(following, PATIENCE)
            while not arrived.empty():
                seen.append(arrived.get_nowait())
            history = [e async for e in client.events(job)]
        assert [e.id for e in seen] == [e.id for e in history]
        assert [e.event for e in seen][-2:] == ["job.progress", "job.succeeded"]

    run(test)


def test_async_worker_completes_reports_progress_and_retries(server: ReplydServer) -> None:
    async def test() -> None:
        async with replyd.AsyncClient(server.url) as client:
            attempts: List[int] = []

            async def handler(ctx: replyd.AsyncJobContext) -> Any:
                attempts.append(ctx.attempt)
                await ctx.progress(50, "half")
                if ctx.input.get("flaky") and ctx.attempt == 1:
                    raise RuntimeError("try again")
                if ctx.input.get("bad"):
                    raise replyd.Permanent("bad input", code="bad_input")
                if ctx.input.get("raw"):
                    return replyd.JobResult("text/csv", b"a,b\n1,2\n")
                return {"n": ctx.input["n"] * 10}

            worker = replyd.AsyncWorker(client, "work", handler, concurrency=3, wait_seconds=20)
            running = asyncio.ensure_future(worker.run(handle_signals=False))
            plain = await client.submit("work", {"n": 4})
            flaky = await client.submit("work", {"n": 1, "flaky": True})
            bad = await client.submit("work", {"n": 1, "bad": True})
            raw = await client.submit("work", {"n": 1, "raw": True})
            assert (await client.wait(plain, timeout=PATIENCE)).state == "succeeded"
            assert (await client.result(plain)).value == {"n": 40}
            again = await client.wait(flaky, timeout=PATIENCE)
            assert (again.state, again.attempt) == ("succeeded", 2)
            failed = await client.wait(bad, timeout=PATIENCE)
            assert failed.state == "failed" and failed.error is not None
            assert failed.error.code == "bad_input" and failed.attempt == 1
            await client.wait(raw, timeout=PATIENCE)
            csv = await client.result(raw)
            assert (csv.content_type, csv.body) == ("text/csv", b"a,b\n1,2\n")
            progress = [e for e in [x async for x in client.events(plain)] if e.event == "job.progress"]
            assert progress and progress[0].job.progress is not None
            assert progress[0].job.progress.message == "half"
            started = time.monotonic()
            worker.stop()
            await asyncio.wait_for(running, PATIENCE)
            assert time.monotonic() - started < 5, "stop cancels the held (20 s) lease request"

    run(test)


def test_async_worker_cancels_the_handler_of_a_canceled_job(server: ReplydServer) -> None:
    async def test() -> None:
        async with replyd.AsyncClient(server.url) as client:
            started = asyncio.Event()
            outcome: "asyncio.Queue[Any]" = asyncio.Queue()

            async def handler(ctx: replyd.AsyncJobContext) -> str:
                started.set()
                try:
                    await asyncio.sleep(PATIENCE)
                except asyncio.CancelledError:
                    await outcome.put(("cancelled", ctx.cancel_requested, ctx.stop_reason))
                    raise
                return "not canceled"

            worker = replyd.AsyncWorker(client, "work", handler, lease_seconds=1.5, wait_seconds=1)
            running = asyncio.ensure_future(worker.run(handle_signals=False))
            job = await client.submit("work", {})
            await asyncio.wait_for(started.wait(), PATIENCE)
            asked = await client.cancel(job)
            assert asked.cancel_requested
            assert await asyncio.wait_for(outcome.get(), PATIENCE) == ("cancelled", True, "canceled")
            assert (await client.wait(job, timeout=PATIENCE)).state == "canceled"
            worker.stop()
            await asyncio.wait_for(running, PATIENCE)

    run(test)


def test_async_worker_with_a_client_key_raises(make_server: Callable[..., ReplydServer]) -> None:
    keyed = make_server(
        '[queues.work]\n\n[[api_keys]]\nkey = "k-client-only"\ntenant = "t"\nrole = "client"\n'
    )

    async def test() -> None:
        async with replyd.AsyncClient(keyed.url, "k-client-only") as client:
            worker = replyd.AsyncWorker(client, "work", lambda ctx: asyncio.sleep(0), wait_seconds=1)
            with pytest.raises(replyd.PermissionDeniedError):
                await worker.run(handle_signals=False)

    run(test)
