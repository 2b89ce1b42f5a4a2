"""The main job: broker, both services and two device agents, live on this machine.

Each agent gets a small application beside it that hands a reading to the
agent's local API every second; the demo prints what the management service
knows (online, health) and what reached the solution service's archive, until
Ctrl-C (or ``--duration``) stops everything in reverse order.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from twelvefactor_services.process import LaunchError

from testbed.hostagent import HostAgent
from testbed.stack import ServiceProcess, Stack, http_get


def _reading(device_index: int, t: float) -> bytes:
    """A plausible sensor reading: a slow sine per device, so the archive has shape."""
    value = 20.0 + 3.0 * math.sin(t / 30.0 + device_index)
    return json.dumps({"temperature_c": round(value, 2)}).encode()


def _feed(agent: HostAgent, index: int, stop: threading.Event, period: float) -> None:
    """The device's application: one reading per period through the local API."""
    while not stop.wait(period):
        try:
            agent.client().publish("temperature", _reading(index, time.time()))
        except OSError as exc:  # agent restarting: the application retries next period
            print(f"  [{agent.device_id}] local API: {exc}", file=sys.stderr)


def _archive_counts(archive_dir: Path) -> dict[str, int]:
    if not archive_dir.is_dir():
        return {}
    counts = {}
    for path in sorted(archive_dir.glob("*.jsonl")):
        with open(path, "rb") as f:
            counts[path.stem] = sum(1 for _ in f)
    return counts


def _report(management: ServiceProcess, stack: Stack, started: float) -> str:
    status, devices = http_get(management, "/devices")
    archive = _archive_counts(stack.archive_dir)
    lines = [f"-- t+{time.monotonic() - started:5.0f} s " + "-" * 60]
    if status != 200:
        return lines[0] + f"\n  management API answered {status}"
    for summary in devices:
        _, dev = http_get(management, f"/devices/{summary['id']}")
        health: dict[str, Any] = dev.get("health") or {}
        queue = health.get("queue") or {}
        load = health.get("load") or ["-"]
        lines.append(
            f"  {dev['id']:<10} {'online ' if dev.get('online') else 'OFFLINE'}"
            f"  slot {health.get('slot') or '-'}  uptime {health.get('uptime_s', 0):>8.0f} s"
            f"  load {load[0]!s:<5}"
            f"  queue {queue.get('depth', '-')!s:>4}  dropped {queue.get('dropped', '-')!s:>3}"
            f"  archived {archive.get(dev['id'], 0):>5}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    parser.add_argument("--dir", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--devices", type=int, default=2, help="number of device agents")
    parser.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between readings")
    parser.add_argument("--report-every", type=float, default=5.0)
    args = parser.parse_args(argv)

    root = args.dir or Path(tempfile.mkdtemp(prefix="twelvefactor-demo-"))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    print(f"twelvefactor demo in {root} (Ctrl-C stops it)")
    stack = Stack(root / "cloud")
    agents: list[HostAgent] = []
    feeders: list[threading.Thread] = []
    status = 0
    try:
        management, _solution = stack.start_all()
        print(
            f"broker: management listener {stack.management_endpoint.port}, "
            f"solution listener {stack.solution_endpoint.port} (TLS, client certificates)"
        )
        api = " ".join(stack.api_options(management))
        print(f"management service: operator API {management.api.url if management.api else '-'}")
        print(f"  try: twelvefactor-management devices {api}")
        for i in range(args.devices):
            device_id = f"dev-{i + 1:03d}"
            agent = HostAgent(stack, device_id, root / "devices" / device_id)
            agent.start()
            agents.append(agent)
            print(f"device {device_id}: agent pid {agent.pid}, local API {agent.socket}")
            feeder = threading.Thread(target=_feed, args=(agent, i, stop, args.period), daemon=True)
            feeder.start()
            feeders.append(feeder)
        started = time.monotonic()
        while not stop.wait(args.report_every):
            print(_report(management, stack, started), flush=True)
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
        stop.set()
        print(_report(management, stack, started), flush=True)
    except LaunchError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        status = 1
    finally:
        stop.set()
        for feeder in feeders:
            feeder.join(timeout=5)
        print("stopping agents, services and broker")
        for agent in reversed(agents):
            agent.stop()
            agent.close()
        stack.stop()
        print("stopped cleanly")
    return status


if __name__ == "__main__":
    sys.exit(main())
