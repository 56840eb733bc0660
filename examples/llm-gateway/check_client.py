#!/usr/bin/env python3
"""What README.md promises, checked with the official `openai` package and
the `durable-streams` client (tests/llm_gateway.rs runs it):

1. a streamed chat completion through replyd gives the same chunks as the
   model server itself, and the answer names its job;
2. a client that drops the connection mid-stream reattaches to the job's
   output (durable-streams, live) from the bytes it had, and the two
   halves are the model's answer byte for byte, from one model call;
3. the same request again with its Idempotency-Key replays the whole
   answer without calling the model again;
4. `Prefer: respond-async` is answered 202 with Location;
5. canceling the job ends the answer and closes the model's connection.

    python3 check_client.py --replyd http://127.0.0.1:8202 --upstream http://127.0.0.1:9100
"""

import argparse
import json
import sys
import time

import durable_streams
import httpx
import openai


def stats(upstream):
    return httpx.get(f"{upstream}/stats").json()


def wait_state(replyd, job):
    """The job's state once it has ended (a long poll)."""
    r = httpx.get(f"{replyd}/v1/jobs/{job}", headers={"Prefer": "wait=10"}, timeout=15)
    return r.json()["state"]


def chunks(stream):
    return [c.model_dump_json() for c in stream]


def offset(n):
    """The output's offset after its first n bytes (replyd's offsets are
    byte positions)."""
    return f"{0:016d}_{n:016d}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--replyd", required=True)
    p.add_argument("--upstream", required=True)
    a = p.parse_args()
    direct = openai.OpenAI(base_url=f"{a.upstream}/v1", api_key="sk-test", max_retries=0)
    via = openai.OpenAI(base_url=f"{a.replyd}/openai/v1", api_key="sk-test", max_retries=0)
    ask = lambda prompt, **kw: dict(
        model="fake", messages=[{"role": "user", "content": prompt}], **kw
    )

    # 1. The same chunks, and the job named.
    want = chunks(direct.chat.completions.create(**ask("one"), stream=True))
    raw = via.chat.completions.with_raw_response.create(**ask("one"), stream=True)
    job = raw.headers["replyd-job-id"]
    assert raw.headers["content-location"] == f"/v1/jobs/{job}/output", raw.headers
    got = chunks(raw.parse())
    assert got == want, (got, want)
    assert len(got) > 10
    print(f"1. {len(got)} chunks, as the model server sent them (job {job})")
    # Not streamed: the model's JSON answer, replayed.
    plain = via.chat.completions.create(**ask("plain"))
    assert plain.choices[0].message.content.startswith("The answer"), plain
    print("1. a completion that does not stream is answered whole")

    # 2. Drop the connection mid-stream; reattach from the bytes we had.
    body = httpx.post(f"{a.upstream}/v1/chat/completions",
                      json=ask("two", stream=True), timeout=30).content
    calls = stats(a.upstream)["calls"]
    with via.chat.completions.with_streaming_response.create(**ask("two"), stream=True) as r:
        job = r.headers["replyd-job-id"]
        had = b""
        for b in r.iter_bytes():
            had += b
            if len(had) > 300:
                break
    # (Leaving the block closed the connection.)
    # Live: the model is still answering. (This client, 0.1.0, predates the
    # protocol's closure, so it stops, as an OpenAI client does, at [DONE].)
    rest = b""
    with durable_streams.stream(f"{a.replyd}/v1/jobs/{job}/output",
                                offset=offset(len(had)), live="long-poll") as s:
        for b in s:
            rest += b
            if (had + rest).endswith(b"data: [DONE]\n\n"):
                break
    assert had + rest == body, (len(had), len(rest), len(body))
    assert wait_state(a.replyd, job) == "succeeded"
    assert stats(a.upstream)["calls"] == calls + 1, "one model call in all"
    print(f"2. dropped after {len(had)} bytes, reattached for {len(rest)}: byte-exact, one model call")

    # 3. The same request again, with its key: the whole answer, no new call.
    key = {"Idempotency-Key": "ask-three"}
    first = via.chat.completions.with_raw_response.create(
        **ask("three"), stream=True, extra_headers=key)
    first_chunks = chunks(first.parse())
    again = via.chat.completions.with_raw_response.create(
        **ask("three"), stream=True, extra_headers=key)
    assert again.headers["replyd-job-id"] == first.headers["replyd-job-id"]
    assert chunks(again.parse()) == first_chunks
    calls_now = stats(a.upstream)["calls"]
    assert calls_now == calls + 2, (calls_now, calls)
    print("3. a repeated request with its Idempotency-Key replays the answer, no new model call")

    # 4. Prefer: respond-async.
    r = httpx.post(f"{a.replyd}/openai/v1/chat/completions", json=ask("four", stream=True),
                   headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    assert r.headers["location"].startswith("/v1/jobs/"), r.headers
    print("4. Prefer: respond-async is answered 202 with Location")

    # 5. Cancel mid-stream: the answer ends, the model's connection closes.
    gone = stats(a.upstream)["disconnects"]
    with via.chat.completions.with_streaming_response.create(
            **ask("five", max_tokens=2000), stream=True) as r:
        job = r.headers["replyd-job-id"]
        n = 0
        it = r.iter_bytes()
        for b in it:
            n += len(b)
            if n > 200:
                break
        c = httpx.post(f"{a.replyd}/v1/jobs/{job}/cancel")
        assert c.status_code in (200, 202), c.text
        started = time.monotonic()
        for b in it:
            n += len(b)
        took = time.monotonic() - started
    assert took < 10, took
    deadline = time.monotonic() + 10
    while stats(a.upstream)["disconnects"] == gone:
        assert time.monotonic() < deadline, "the model's connection is still open"
        time.sleep(0.05)
    assert wait_state(a.replyd, job) == "canceled"
    print(f"5. cancel ended the answer after {n} bytes and closed the model's connection")
    print("ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        raise
