"""Durable store-and-forward throughput against raw paho QoS 1, in one run.

Both sides send the same number of 256-byte payloads at QoS 1 to the same
broker listener with the same device certificate. The agent's figure is
end to end: from the first message handed to its local API (each one
committed to SQLite before it is acknowledged) until the broker has
acknowledged the last one and the queue is empty. Target: ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from twelvefactor_services.hostagent import HostAgent
from twelvefactor_services.launcher import Stack, wait_until
from twelvefactor_services.mqtt import make_client

PAYLOAD = 256


def raw_paho(stack: Stack, count: int) -> float:
    """Messages per second of a plain paho client, 100 in flight, like the agent."""
    client = make_client("bench-raw-sol", stack.device("bench-raw"))
    client.max_inflight_messages_set(100)
    client.connect(stack.solution_endpoint.host, stack.solution_endpoint.port)
    client.loop_start()
    wait_until(client.is_connected, timeout=30, what="raw client connected")
    payload = os.urandom(PAYLOAD)
    started = time.perf_counter()
    infos = [client.publish("sol/bench-raw/up/data/bench", payload, qos=1) for _ in range(count)]
    for info in infos:
        info.wait_for_publish(timeout=120)
    elapsed = time.perf_counter() - started
    assert all(i.rc == mqtt.MQTT_ERR_SUCCESS and i.is_published() for i in infos)
    client.disconnect()
    client.loop_stop()
    return count / elapsed


def agent_path(stack: Stack, root: Path, count: int) -> float:
    agent = HostAgent(stack, "bench-agent", root / "bench-agent")
    try:
        agent.start()
        client = agent.client()
        wait_until(lambda: client.status()["solution"] == "online", timeout=30, what="online")
        payload = os.urandom(PAYLOAD)
        started = time.perf_counter()
        for _ in range(0, count, 500):
            client.publish_many("bench", [payload] * 500)
        wait_until(
            lambda: client.status()["queue"]["depth"] == 0,  # type: ignore[index]
            timeout=600,
            what="queue drained",
        )
        return count / (time.perf_counter() - started)
    finally:
        agent.stop()
        agent.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians")
    args = parser.parse_args()
    raws, durables = [], []
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        stack = Stack(Path(tmp) / "cloud")
        stack.start_broker()
        try:
            # Alternate the two so a burst of load elsewhere hits both alike.
            for n in range(args.rounds):
                raws.append(raw_paho(stack, args.count))
                durables.append(agent_path(stack, Path(tmp) / f"round-{n}", args.count))
                print(f"round {n + 1}: raw {raws[-1]:8.0f} msg/s, agent {durables[-1]:8.0f} msg/s")
        finally:
            stack.stop()
    raw, durable = statistics.median(raws), statistics.median(durables)
    print(f"messages: {args.count} x {PAYLOAD} B, QoS 1, TLS, same broker and listener")
    print(f"raw paho QoS 1 (median):          {raw:9.0f} msg/s")
    print(f"agent store-and-forward (median): {durable:9.0f} msg/s")
    print(f"ratio agent/raw:                  {durable / raw:9.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
