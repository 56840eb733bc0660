#!/usr/bin/env python3
"""An SQS requester on boto3, the AWS SDK for Python (not written for
replyd): it creates a reply queue of its own, sends N requests with the
message attributes `CorrelationId` and `ReplyTo` (its queue's URL), and
receives the replies.

    request_client.py ENDPOINT REQUEST_QUEUE N

Prints one JSON object: what was sent (correlation id -> i) and every
reply (by correlation id: its attributes and body).
"""

import json
import sys
import time
import uuid

import boto3


def main():
    endpoint, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sqs = client("sqs", endpoint)
    request_url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    reply_url = sqs.create_queue(QueueName=f"boto3-replies-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    text = lambda v: {"DataType": "String", "StringValue": v}
    sent = {}
    for i in range(n):
        corr = str(uuid.uuid4())
        sent[corr] = i
        sqs.send_message(
            QueueUrl=request_url,
            MessageBody=json.dumps({"seconds": 0, "i": i}),
            MessageAttributes={
                "CorrelationId": text(corr),
                "ReplyTo": text(reply_url),
                "x-replyd-queue": text("demo"),
            },
        )
    print(json.dumps({"sent": sent, "replies": receive_replies(sqs, reply_url, n)}))


def client(service, endpoint):
    """A boto3 client of `service` on the local endpoint (moto), with test
    credentials: nothing asks AWS for any."""
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def receive_replies(sqs, reply_url, n, linger=0):
    """The replies in `reply_url` (by correlation id: attributes and body),
    until `n` came or a minute passed, then `linger` seconds more (a
    duplicate would come then)."""
    replies = {}
    deadline = time.time() + 60
    count = lambda: sum(len(v) for v in replies.values())
    while time.time() < deadline and (count() < n or linger > 0):
        if count() >= n:
            deadline = min(deadline, time.time() + linger)
            linger = 0
        r = sqs.receive_message(
            QueueUrl=reply_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
        )
        for m in r.get("Messages", []):
            attrs = {k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()}
            replies.setdefault(attrs.get("CorrelationId"), []).append(
                {"attributes": attrs, "body": m["Body"]}
            )
            sqs.delete_message(QueueUrl=reply_url, ReceiptHandle=m["ReceiptHandle"])
    return replies


if __name__ == "__main__":
    main()
