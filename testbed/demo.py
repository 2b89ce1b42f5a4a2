"""The main job: broker, both services and two device agents, live on this machine.

Each agent gets a small application beside it that hands a reading to the
agent's local API every second. The screen (testbed/demo_view.py) pins the
addresses, login and paths at the top, shows one row per device as the
operator API reports it, and the fleet's events as they happen
(testbed/demo_watch.py): online and offline with the reason, configuration
applied or rejected, update jobs, an agent that died and how. Ctrl-C (or
``--duration``) stops everything in reverse order; the working folder, with
the keys in it, is removed unless ``--keep`` (or ``--dir``) says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import queue
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from twelvefactor_services.process import LaunchError

from testbed.demo_view import Screen, cells
from testbed.demo_watch import Snapshot, changes, exit_text, snapshot
from testbed.hostagent import HostAgent
from testbed.stack import ServiceProcess, Stack, http_get, http_send


def _reading(device_index: int, t: float) -> bytes:
    """A plausible sensor reading: a slow sine per device, so the archive has shape."""
    value = 20.0 + 3.0 * math.sin(t / 30.0 + device_index)
    return json.dumps({"temperature_c": round(value, 2)}).encode()


def _feed(
    agent: HostAgent,
    index: int,
    stop: threading.Event,
    period: float,
    events: queue.SimpleQueue[str],
) -> None:
    """The device's application: one reading per period through the local API; an outage of
    the local API is one event when it starts and one when it ends, not a line per try."""
    failing: str | None = None
    while not stop.wait(period):
        try:
            agent.client().publish("temperature", _reading(index, time.time()))
        except OSError as exc:  # the agent is down or restarting: retry next period
            if failing is None:
                failing = exc.strerror or str(exc)
                events.put(f"{agent.device_id} application: local API unreachable ({failing})")
            continue
        if failing is not None:
            events.put(f"{agent.device_id} application: local API answers again")
            failing = None


def _archive_counts(archive_dir: Path) -> dict[str, int]:
    if not archive_dir.is_dir():
        return {}
    counts = {}
    for path in sorted(archive_dir.glob("*.jsonl")):
        with open(path, "rb") as f:
            counts[path.stem] = sum(1 for _ in f)
    return counts


def _console_login(stack: Stack, management: ServiceProcess) -> tuple[str, str] | None:
    """An operator with a password for the web console, if this service serves one."""
    assert management.api is not None
    status, _ = http_get(management, "/console/")
    if status != 200:
        return None
    password = secrets.token_urlsafe(12)
    body = {"name": "demo", "role": "admin", "password": password}
    status, answer = http_send(management, "POST", "/operators", body)
    if status != 201:
        raise LaunchError(f"could not make the console's operator: {status} {answer}")
    return f"{management.api.url}/console/", password


def _cli() -> str:
    """The operator CLI as this shell can run it (the venv's, when it is not on PATH)."""
    beside = Path(sys.executable).with_name("twelvefactor-management")
    return shutil.which("twelvefactor-management") or str(beside)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    parser.add_argument("--dir", type=Path, help="working folder, kept (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    parser.add_argument("--devices", type=int, default=2, help="number of device agents")
    parser.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between readings")
    parser.add_argument("--report-every", type=float, default=2.0)
    parser.add_argument(
        "--plain", action="store_true", help="lines, not a live view (the default off a terminal)"
    )
    args = parser.parse_args(argv)

    root = args.dir or Path(tempfile.mkdtemp(prefix="twelvefactor-demo-"))
    remove = args.dir is None and not args.keep
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    print(f"twelvefactor demo in {root}: starting the broker, the services and the agents")
    stack = Stack(root / "cloud")
    agents: list[HostAgent] = []
    started_at: dict[str, float] = {}
    feeders: list[threading.Thread] = []
    events: queue.SimpleQueue[str] = queue.SimpleQueue()
    status = 0
    try:
        management, _solution = stack.start_all()
        assert management.api is not None
        login = _console_login(stack, management)
        for i in range(args.devices):
            device_id = f"dev-{i + 1:03d}"
            agent = HostAgent(stack, device_id, root / "devices" / device_id)
            agent.start()
            agents.append(agent)
            started_at[device_id] = time.monotonic()
            feeder = threading.Thread(
                target=_feed, args=(agent, i, stop, args.period, events), daemon=True
            )
            feeder.start()
            feeders.append(feeder)
        api = " ".join(stack.api_options(management))
        kept = "kept" if not remove else "removed on exit; --keep keeps it"
        pinned = [
            f"console       {login[0]}  login: demo / {login[1]}  (the certificate is the"
            f" demo's own CA, {stack.pki.ca_cert}: the browser asks before it trusts it)"
            if login
            else "console       (this management service serves none)",
            f"operator API  {management.api.url}",
            f"  CLI         {_cli()} devices {api}",
            f"broker        management :{stack.management_endpoint.port}, solution"
            f" :{stack.solution_endpoint.port} (TLS, client certificates only)",
            f"folder        {root} ({kept})",
            f"  keys        CA and service keys in {stack.pki.root}; each device's in"
            f" {root / 'devices'}/<id>",
            f"  registry    {stack.registry_db}; archive {stack.archive_dir}",
            *(f"device        {a.device_id}: agent pid {a.pid}, API {a.socket}" for a in agents),
            "UP is the agent's uptime (a host agent's health reports the host's); SLOT none: no"
            " A/B slots on a host agent.  Ctrl-C stops everything.",
        ]
        live = False if args.plain else None
        with Screen(pinned, live=live) as screen:
            _watch(screen, management, stack, agents, started_at, events, stop, args)
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
        if remove:
            shutil.rmtree(root, ignore_errors=True)
            print(f"removed {root} and the keys in it")
        print("stopped cleanly")
    return status


def _watch(
    screen: Screen,
    management: ServiceProcess,
    stack: Stack,
    agents: list[HostAgent],
    started_at: dict[str, float],
    events: queue.SimpleQueue[str],
    stop: threading.Event,
    args: argparse.Namespace,
) -> None:
    """Until stopped: the events as they come, the table at every report."""
    started = time.monotonic()
    before = Snapshot()
    died: dict[str, str] = {}
    next_report = 0.0
    while not stop.is_set():
        while not events.empty():
            screen.event(events.get())
        for agent in agents:
            code = agent.exit_status
            if code is not None and agent.device_id not in died:
                died[agent.device_id] = exit_text(code)
                screen.event(f"{agent.device_id} agent died: {died[agent.device_id]}")
        now = time.monotonic()
        if now >= next_report:
            next_report = now + args.report_every
            after = snapshot(lambda path: http_get(management, path))
            for line in changes(before, after):
                screen.event(line)
            if after.ok:
                before = after
            archive = _archive_counts(stack.archive_dir)
            rows = []
            for device, row in sorted(before.rows.items()):
                if device in started_at:  # a host agent: its own uptime, not the host's
                    up = None if device in died else now - started_at[device]
                    row = dataclasses.replace(row, uptime_s=up)
                rows.append(cells(row, archive.get(device, 0), died.get(device)))
            screen.table(rows)
            if args.duration is not None and now - started >= args.duration:
                return
        stop.wait(0.2)


if __name__ == "__main__":
    sys.exit(main())
