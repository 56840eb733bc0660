#!/usr/bin/env python3
"""An MQTT 5 request/response client on Eclipse Paho (not written for
replyd), as MQTT 5's request/response pattern has it: it subscribes to a
response topic of its own, then publishes N requests at QoS 1, each with
the Response Topic and a fresh Correlation Data, and waits for the replies.

    rpc_client.py HOST PORT REQUEST_TOPIC N

The job queue is named by a user property (`x-replyd-queue: demo`). Prints
one JSON object: what was sent (correlation data -> i) and every reply
received (by correlation data).
"""

import json
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main():
    host, port, topic, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    response_topic = f"paho/{uuid.uuid4().hex}/responses"
    replies = {}
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        subscribed.set()

    def on_message(client, userdata, msg):
        props = msg.properties
        corr = props.CorrelationData.decode() if hasattr(props, "CorrelationData") else None
        with lock:
            replies.setdefault(corr, []).append(
                {
                    "user_properties": dict(getattr(props, "UserProperty", [])),
                    "content_type": getattr(props, "ContentType", None),
                    "body": msg.payload.decode("utf-8", "replace"),
                }
            )

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"paho-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    client.subscribe(response_topic, qos=1)
    if not subscribed.wait(10):
        raise SystemExit("no SUBACK")

    sent = {}
    for i in range(n):
        corr = str(uuid.uuid4())
        sent[corr] = i
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic
        props.CorrelationData = corr.encode()
        props.ContentType = "application/json"
        props.UserProperty = [("x-replyd-queue", "demo")]
        info = client.publish(
            topic, json.dumps({"seconds": 0, "i": i}), qos=1, properties=props
        )
        info.wait_for_publish(10)

    deadline = time.time() + 60
    while time.time() < deadline:
        with lock:
            if len(replies) >= n:
                break
        time.sleep(0.05)
    # A moment more: a second reply to one request would show here.
    time.sleep(0.5)
    client.loop_stop()
    client.disconnect()
    with lock:
        print(json.dumps({"sent": sent, "replies": replies}))


if __name__ == "__main__":
    main()
