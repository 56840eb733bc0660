#!/usr/bin/env python3
"""A NATS requester on nats-py, the official Python client (not written for
replyd): N concurrent `request()` calls to a subject, each with its own
`Nats-Msg-Id` header (sent again, with the same id, if a request times
out, as a NATS requester does) and the job queue in `x-replyd-queue`.

    request_client.py NATS_URL SUBJECT N

Prints one JSON object: what was sent (message id -> i), every reply (by
message id: its headers and body), and how many requests were sent again.
"""

import asyncio
import json
import sys
import uuid

import nats
from nats.errors import TimeoutError


async def main():
    url, subject, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    nc = await nats.connect(url)
    sent, replies, again = {}, {}, 0

    async def one(i):
        nonlocal again
        msg_id = str(uuid.uuid4())
        sent[msg_id] = i
        headers = {"Nats-Msg-Id": msg_id, "x-replyd-queue": "demo"}
        body = json.dumps({"seconds": 0, "i": i}).encode()
        for attempt in range(3):
            try:
                msg = await nc.request(subject, body, timeout=10, headers=headers)
            except TimeoutError:
                again += 1
                continue
            replies.setdefault(msg_id, []).append(
                {"headers": dict(msg.headers or {}), "body": msg.data.decode("utf-8", "replace")}
            )
            return

    await asyncio.gather(*(one(i) for i in range(n)))
    await nc.drain()
    print(json.dumps({"sent": sent, "replies": replies, "again": again}))


if __name__ == "__main__":
    asyncio.run(main())
