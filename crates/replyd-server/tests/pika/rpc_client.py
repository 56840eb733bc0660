#!/usr/bin/env python3
"""An RPC client as in RabbitMQ's tutorial 6, on pika (not written for
replyd): it publishes N requests to a queue, each with a fresh
correlation_id and a reply_to, and waits for the replies.

    rpc_client.py callback|direct AMQP_URL REQUEST_QUEUE N

`callback` declares an exclusive, server-named callback queue (the
tutorial's way); `direct` uses RabbitMQ's direct reply-to
(`amq.rabbitmq.reply-to`). Prints one JSON object: what was sent
(correlation id -> i) and every reply received (by correlation id).
"""

import json
import sys
import time
import uuid

import pika


def main():
    mode, url, queue, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    if mode == "callback":
        result = channel.queue_declare(queue="", exclusive=True)
        callback_queue = result.method.queue
    elif mode == "direct":
        callback_queue = "amq.rabbitmq.reply-to"
    else:
        raise SystemExit(f"unknown mode {mode!r}")

    replies = {}

    def on_response(ch, method, props, body):
        replies.setdefault(props.correlation_id, []).append(
            {
                "headers": props.headers or {},
                "content_type": props.content_type,
                "body": body.decode("utf-8", "replace"),
            }
        )

    # Direct reply-to must be consumed in no-ack mode, before publishing.
    channel.basic_consume(
        queue=callback_queue, on_message_callback=on_response, auto_ack=True
    )

    sent = {}
    for i in range(n):
        corr_id = str(uuid.uuid4())
        sent[corr_id] = i
        channel.basic_publish(
            exchange="",
            routing_key=queue,
            properties=pika.BasicProperties(
                reply_to=callback_queue,
                correlation_id=corr_id,
                message_id=corr_id,
                content_type="application/json",
                headers={"x-replyd-queue": "demo"},
            ),
            body=json.dumps({"seconds": 0, "i": i}),
        )

    deadline = time.time() + 60
    while len(replies) < n and time.time() < deadline:
        connection.process_data_events(time_limit=0.5)
    # A moment more: a second reply to one request would show here.
    connection.process_data_events(time_limit=0.5)
    connection.close()
    print(json.dumps({"sent": sent, "replies": replies}))


if __name__ == "__main__":
    main()
