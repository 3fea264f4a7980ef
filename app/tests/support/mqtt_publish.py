#!/usr/bin/env python3
"""An independent QoS 1 publisher for the ddms MQTT tests (paho-mqtt, not the client ddms uses).

Publishes COUNT telemetry messages to devices/DEVICE/telemetry; message i is
{"ts": BASE_MS + i, "metrics": {"seq": i}}, so every message is one reading with its own
timestamp. Exits 0 once the broker has acknowledged (PUBACK) every message. Reconnects by
itself, resending what was not acknowledged, so a broker restart mid-stream is survived.
Prints "acked N" as it goes (every 100), so a test can act mid-stream.

SIGTERM ends the stream early: no further message is published, the ones already published
are waited for as usual, and "published N" names how many there were (messages 0..N-1).
"""

import argparse
import json
import signal
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--base-ms", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0, help="messages per second; 0 = as fast as possible")
    parser.add_argument("--client-id", default="ddms-test-publisher")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    acked = 0
    target = args.count
    done = threading.Event()
    lock = threading.Lock()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    def on_publish(client, userdata, mid, reason_code, properties):
        nonlocal acked
        with lock:
            acked += 1
            if acked % 100 == 0 or acked == target:
                print(f"acked {acked}", flush=True)
            if acked == target:
                done.set()

    def on_connect(client, userdata, flags, reason_code, properties):
        print(f"connected {reason_code}", flush=True)

    def on_disconnect(client, userdata, flags, reason_code, properties):
        print(f"disconnected {reason_code}", flush=True)

    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    if args.username:
        client.username_pw_set(args.username, args.password)
    client.on_publish = on_publish
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(min_delay=0.1, max_delay=1)
    client.connect_async("127.0.0.1", args.port, keepalive=30)
    client.loop_start()

    topic = f"devices/{args.device}/telemetry"
    started = time.monotonic()
    published = 0
    for i in range(args.count):
        if stop.is_set():
            break
        payload = json.dumps({"ts": args.base_ms + i, "metrics": {"seq": i}})
        # Queued by paho while disconnected; resent after reconnecting until acknowledged.
        client.publish(topic, payload, qos=1)
        published = i + 1
        if args.rate > 0:
            ahead = (i + 1) / args.rate - (time.monotonic() - started)
            if ahead > 0:
                stop.wait(ahead)
    with lock:
        target = published
        if acked == target:
            done.set()
    print(f"published {published}", flush=True)

    finished = done.wait(args.timeout)
    client.disconnect()
    client.loop_stop()
    if not finished:
        print(f"timeout: {acked} of {target} acknowledged", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
