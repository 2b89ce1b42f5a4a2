"""Durable store-and-forward throughput against raw paho QoS 1, in one run.

Both sides send the same number of 256-byte payloads at QoS 1 to the same
broker listener with the same device certificate. The agent's figure is
end to end: from the first message handed to its local API (each one
committed to SQLite before it is acknowledged) until the broker has
acknowledged the last one and the queue is empty. Target: ratio >= 0.8.

The end-to-end figure mixes two halves that compete for the agent's one
interpreter, so each round also splits them:

- accepting while forwarding: the same end-to-end run, until the last
  `publish_many` is answered (the forwarder runs meanwhile);
- accepting with the sessions offline (the broker stopped): the local API
  and SQLite alone;
- forwarding a backlog: the broker started again, from the solution session
  being online until the queue is empty (queue read, publish, PUBACK, delete);
- the forwarder's own work per message, with no network: the forwarder's
  queue reads (windows of 100), batches and grouped deletes on a queue
  file, as its thread does them, paho left out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from twelvefactor_agent.config.settings import load
from twelvefactor_agent.forward.queue import Queue
from twelvefactor_agent.forward.window import ForwardWindow
from twelvefactor_agent.protocol import batch, topics
from twelvefactor_agent.session.solution import DELETE_GROUP, WINDOW
from twelvefactor_services.mqtt import make_client

from testbed.hostagent import HostAgent
from testbed.stack import Stack, wait_until

PAYLOAD = 256
BATCH = 500  # messages per publish_many


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


def _poll(condition: Callable[[], bool], interval: float, timeout: float, what: str) -> None:
    """Poll at `interval` (a status call is a local-API request: not too often while
    the agent is busy, or the poll itself slows what it measures)."""
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f} s")
        time.sleep(interval)


def _hand_over(agent: HostAgent, count: int) -> None:
    client = agent.client()
    payload = os.urandom(PAYLOAD)
    for _ in range(0, count, BATCH):
        client.publish_many("bench", [payload] * BATCH)


def _depth(agent: HostAgent) -> int:
    queue = agent.client().status()["queue"]
    assert isinstance(queue, dict)
    return int(queue["depth"])


def _online(agent: HostAgent) -> bool:
    return agent.client().status()["solution"] == "online"


def agent_path(stack: Stack, root: Path, count: int) -> dict[str, float]:
    """The agent's rates (msg/s): end to end, and its halves."""
    agent = HostAgent(stack, "bench-agent", root / "bench-agent")
    rates: dict[str, float] = {}
    try:
        agent.start()
        _poll(lambda: _online(agent), 0.1, 30, "online")
        # End to end; accepting is done when the last publish_many is answered.
        started = time.perf_counter()
        _hand_over(agent, count)
        rates["accepting while forwarding"] = count / (time.perf_counter() - started)
        _poll(lambda: _depth(agent) == 0, 0.02, 600, "queue drained")
        rates["end to end"] = count / (time.perf_counter() - started)
        # The halves apart: accepting with nowhere to send, then forwarding the backlog.
        stack.broker.stop()
        _poll(lambda: not _online(agent), 0.1, 60, "offline")
        started = time.perf_counter()
        _hand_over(agent, count)
        rates["accepting, sessions offline"] = count / (time.perf_counter() - started)
        assert _depth(agent) == count
        stack.broker.start()
        _poll(lambda: _online(agent), 0.01, 60, "online again")
        started = time.perf_counter()
        _poll(lambda: _depth(agent) == 0, 0.02, 600, "backlog drained")
        rates["forwarding a backlog"] = count / (time.perf_counter() - started)
        return rates
    finally:
        agent.stop()
        agent.close()


def forwarder_work(stack: Stack, root: Path, count: int) -> float:
    """Microseconds per message of the forwarder's own work, no network: what its
    `_pump` and `flush_deletes` do with the queue, on the agent's queue settings."""
    data = root / "fwd"
    data.mkdir(parents=True)
    agent = HostAgent(stack, "bench-fwd", root / "fwd-agent")
    try:
        settings = load(agent.config_file).queue
    finally:
        agent.close()
    api = Queue(data / "queue.db", settings, durable=True)
    payload = os.urandom(PAYLOAD)
    for _ in range(0, count, BATCH):
        api.append_many([("bench", payload)] * BATCH)
    queue = Queue(data / "queue.db", settings, durable=False)  # the forwarder's connection
    window = ForwardWindow(WINDOW)
    device = "bench-fwd"
    delivered: list[int] = []
    mid = 0
    started = time.perf_counter()
    while True:
        pending = queue.pending(window.cursor, window.room())
        if not pending:
            break
        for run in batch.runs(pending):
            topics.data(device, run[0].stream)
            batch.encode(queue.incarnation, [(m.seq, m.ts, m.payload) for m in run])
            mid += 1
            window.sent(tuple(m.seq for m in run), mid)
        for acked in list(window.in_flight):  # every PUBACK, as on_publish takes them
            seqs = window.acked(acked)
            assert seqs is not None
            delivered.extend(seqs)
        if len(delivered) >= DELETE_GROUP:
            queue.remove(delivered)
            delivered = []
    queue.remove(delivered)
    elapsed = time.perf_counter() - started
    assert queue.stats().depth == 0
    queue.close()
    api.close()
    return elapsed / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians")
    args = parser.parse_args()
    if args.count % BATCH:
        parser.error(f"--count must be a multiple of {BATCH}")
    raws: list[float] = []
    agents: list[dict[str, float]] = []
    works: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        stack = Stack(Path(tmp) / "cloud")
        stack.start_broker()
        try:
            # Alternate the two so a burst of load elsewhere hits both alike.
            for n in range(args.rounds):
                raws.append(raw_paho(stack, args.count))
                agents.append(agent_path(stack, Path(tmp) / f"round-{n}", args.count))
                works.append(forwarder_work(stack, Path(tmp) / f"work-{n}", args.count))
                print(
                    f"round {n + 1}: raw {raws[-1]:8.0f} msg/s, agent"
                    f" {agents[-1]['end to end']:8.0f} msg/s end to end"
                )
        finally:
            stack.stop()
    raw = statistics.median(raws)
    rates = {name: statistics.median(a[name] for a in agents) for name in agents[0]}
    load_avg = os.getloadavg()
    print(f"messages: {args.count} x {PAYLOAD} B, QoS 1, TLS, same broker and listener")
    print(f"load average at the end: {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}")
    print(f"medians of {args.rounds} rounds:")
    print(f"raw paho QoS 1 (100 in flight):       {raw:9.0f} msg/s")
    print(f"agent store-and-forward, end to end:  {rates['end to end']:9.0f} msg/s")
    print(f"  accepting while forwarding:         {rates['accepting while forwarding']:9.0f} msg/s")
    print(
        f"  accepting, sessions offline:        {rates['accepting, sessions offline']:9.0f} msg/s"
    )
    forwarding = rates["forwarding a backlog"]
    print(
        f"  forwarding a backlog:               {forwarding:9.0f} msg/s"
        f"  ({1e6 / forwarding:.0f} us/message)"
    )
    work = statistics.median(works)
    print(f"forwarder's own work, no network:     {work:9.1f} us/message")
    print(
        f"ratio agent/raw:                      {rates['end to end'] / raw:9.2f}  (target >= 0.8)"
    )


if __name__ == "__main__":
    main()
