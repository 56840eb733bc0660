#!/usr/bin/env python3
"""A requester that speaks Spring's ReplyingKafkaTemplate wire format, on
confluent-kafka (not written for replyd): each request carries
`kafka_replyTopic`, `kafka_correlationId` and `kafka_replyPartition`, and a
key; the requester reads only its reply partition, as Spring's reply
container does when a reply partition is set.

    spring_requester.py BOOTSTRAP REQUEST_TOPIC REPLY_TOPIC PARTITION N uuid|string

`uuid`: the correlation id is a UUID's 16 raw bytes (its most significant
64 bits, then its least, big-endian: Spring's default); `string`: it is a
UTF-8 string (Spring with string correlation). Prints one JSON object: what
was sent (correlation id as hex -> i and key) and every reply received (by
correlation id as hex), with its partition, key and headers (hex).
"""

import json
import struct
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition


def main():
    bootstrap, requests, reply_topic = sys.argv[1], sys.argv[2], sys.argv[3]
    partition, n, mode = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"spring-requester-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    # Spring's reply container, given a reply partition, is assigned just
    # that partition; from its end: replies come after the requests.
    low, high = consumer.get_watermark_offsets(
        TopicPartition(reply_topic, partition), timeout=10
    )
    consumer.assign([TopicPartition(reply_topic, partition, high)])

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    sent = {}
    for i in range(n):
        u = uuid.uuid4()
        corr = u.bytes if mode == "uuid" else str(u).encode()
        key = f"k-{i}".encode()
        sent[corr.hex()] = {"i": i, "key": key.hex()}
        producer.produce(
            requests,
            key=key,
            value=json.dumps({"seconds": 0, "i": i}).encode(),
            headers=[
                ("kafka_replyTopic", reply_topic.encode()),
                ("kafka_correlationId", corr),
                ("kafka_replyPartition", struct.pack(">i", partition)),
            ],
        )
    producer.flush(30)

    replies = {}
    deadline = time.time() + 60
    # A second reply to one request would show in the moment after.
    while time.time() < deadline:
        m = consumer.poll(0.5)
        if m is None:
            if len(replies) >= n:
                break
            continue
        if m.error():
            continue
        headers = {k: (v or b"").hex() for k, v in (m.headers() or [])}
        corr = bytes.fromhex(headers.get("kafka_correlationId", ""))
        replies.setdefault(corr.hex(), []).append(
            {
                "partition": m.partition(),
                "key": (m.key() or b"").hex(),
                "headers": headers,
                "body": (m.value() or b"").decode("utf-8", "replace"),
            }
        )
    consumer.close()
    print(json.dumps({"sent": sent, "replies": replies}))


if __name__ == "__main__":
    main()
