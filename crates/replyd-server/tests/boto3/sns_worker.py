#!/usr/bin/env python3
"""A worker of an `executor = "sns"` queue on boto3 (not written for
replyd): it subscribes a queue of its own to the work topic (raw message
delivery), says `ready`, then takes N jobs: each message's body is a job's
input, its attributes `CorrelationId` (the job) and `ReplyTo` (replyd's
reply topic, an ARN); it publishes the result there with the same
`CorrelationId`.

    sns_worker.py ENDPOINT WORK_TOPIC N

Prints one JSON object: the jobs it handled and the ReplyTo they named.
"""

import json
import sys
import time
import uuid

from request_client import client


def main():
    endpoint, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sqs, sns = client("sqs", endpoint), client("sns", endpoint)
    topic = sns.create_topic(Name=work)["TopicArn"]
    url = sqs.create_queue(QueueName=f"sns-worker-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
    )
    print("ready", flush=True)
    handled, reply_to = [], set()
    deadline = time.time() + 60
    while len(handled) < n and time.time() < deadline:
        r = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        )
        for m in r.get("Messages", []):
            attrs = {k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()}
            job = json.loads(m["Body"])
            sns.publish(
                TopicArn=attrs["ReplyTo"],
                Message=json.dumps({"doubled": job["n"] * 2}),
                MessageAttributes={
                    "CorrelationId": {"DataType": "String", "StringValue": attrs["CorrelationId"]},
                    "ContentType": {"DataType": "String", "StringValue": "application/json"},
                },
            )
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            handled.append(attrs["CorrelationId"])
            reply_to.add(attrs["ReplyTo"])
    print(json.dumps({"handled": handled, "reply_to": sorted(reply_to)}))


if __name__ == "__main__":
    main()
