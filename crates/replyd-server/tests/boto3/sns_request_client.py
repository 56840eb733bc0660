#!/usr/bin/env python3
"""An SNS requester on boto3 (not written for replyd): it creates a topic,
subscribes replyd's request queue to it (with raw message delivery, or
without: SNS's JSON envelope), creates a reply queue of its own, publishes
N requests to the topic with the message attributes `CorrelationId` and
`ReplyTo` (its queue's URL), and receives the replies.

    sns_request_client.py ENDPOINT REQUEST_QUEUE N raw|envelope [queue|topic]

With `topic`, the requester's ReplyTo is a topic of its own (its queue
subscribed to it with raw delivery), so replies come through SNS too.

Prints one JSON object: what was sent (correlation id -> i) and every
reply (by correlation id: its attributes and body).
"""

import json
import sys
import time
import uuid

from request_client import client, receive_replies


def main():
    endpoint, queue, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    reply_by = sys.argv[5] if len(sys.argv) > 5 else "queue"
    sqs, sns = client("sqs", endpoint), client("sns", endpoint)
    request_url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    request_arn = sqs.get_queue_attributes(
        QueueUrl=request_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    topic = sns.create_topic(Name=f"requests-{uuid.uuid4().hex[:12]}")["TopicArn"]
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=request_arn,
        Attributes={"RawMessageDelivery": "true" if mode == "raw" else "false"},
    )
    reply_url = sqs.create_queue(QueueName=f"sns-replies-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    reply_to = reply_url
    if reply_by == "topic":
        reply_topic = sns.create_topic(Name=f"replies-{uuid.uuid4().hex[:12]}")["TopicArn"]
        reply_arn = sqs.get_queue_attributes(
            QueueUrl=reply_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        sns.subscribe(
            TopicArn=reply_topic, Protocol="sqs", Endpoint=reply_arn,
            Attributes={"RawMessageDelivery": "true"},
        )
        reply_to = reply_topic
    text = lambda v: {"DataType": "String", "StringValue": v}
    sent = {}
    for i in range(n):
        corr = str(uuid.uuid4())
        sent[corr] = i
        sns.publish(
            TopicArn=topic,
            Message=json.dumps({"seconds": 0, "i": i}),
            MessageAttributes={
                "CorrelationId": text(corr),
                "ReplyTo": text(reply_to),
                "x-replyd-queue": text("demo"),
            },
        )
    replies = receive_replies(sqs, reply_url, n, linger=2)
    print(json.dumps({"sent": sent, "replies": replies}))


if __name__ == "__main__":
    main()
