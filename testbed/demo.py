"""The main job: broker, both services and two device agents, live on this machine.

Each agent gets a small application beside it that hands a reading to the
agent's local API every second. The screen (testbed/demo_view.py) pins the
addresses, login and paths at the top, shows one row per device as the
operator API reports it, and the fleet's events as they happen
(testbed/demo_watch.py): online and offline with the reason, configuration
applied or rejected, update jobs, an agent that died and how. Ctrl-C (or
``--duration``) stops everything in reverse order; the working folder, with
the keys in it, is removed unless ``--keep`` (or ``--dir``) says otherwise.

``--qemu`` adds a real device (testbed/demo_qemu.py): the reference image in
QEMU behind the shipped hub, whose broker and services then serve the host
agents too, so that the console shows one fleet; an update of the next
version waits as an artifact, and the pinned lines say how to roll it out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import queue
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from twelvefactor_services.process import LaunchError

from testbed import demo_qemu
from testbed.demo_view import Screen, cells
from testbed.demo_watch import Get, Snapshot, changes, exit_text, machine_row, snapshot
from testbed.hostagent import HostAgent
from testbed.stack import ServiceProcess, Stack, http_send


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


Send = Callable[[str, str, Any], tuple[int, Any]]  # (method, path, body) on the operator API


def _console_login(send: Send, api_url: str) -> tuple[str, str] | None:
    """An operator with a password for the web console, if this service serves one."""
    status, _ = send("GET", "/console/", None)
    if status != 200:
        return None
    password = secrets.token_urlsafe(12)
    body = {"name": "demo", "role": "admin", "password": password}
    status, answer = send("POST", "/operators", body)
    if status != 201:
        raise LaunchError(f"could not make the console's operator: {status} {answer}")
    return f"{api_url}/console/", password


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
    parser.add_argument(
        "--qemu",
        action="store_true",
        help="add a real device: the reference image in QEMU through a WireGuard tunnel (root)",
    )
    parser.add_argument(
        "--image",
        type=Path,
        help="with --qemu: the disk image to boot (default: the reference image, built or cached)",
    )
    args = parser.parse_args(argv)
    if args.image is not None and not args.qemu:
        parser.error("--image is for --qemu")
    if args.image is not None and not args.image.is_file():
        parser.error(f"--image {args.image}: no such file")
    if args.qemu:
        try:
            demo_qemu.check_can_run(os.geteuid())
        except demo_qemu.QemuDemoError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 2

    root = args.dir or Path(tempfile.mkdtemp(prefix="twelvefactor-demo-"))
    remove = args.dir is None and not args.keep
    stop = threading.Event()

    starting = [True]  # a signal while starting (an image build, a hub start) ends the step

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if starting[0]:
            starting[0] = False
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    what = (
        "the hub (broker and services), the agents and QEMU"
        if args.qemu
        else ("the broker, the services and the agents")
    )
    print(f"twelvefactor demo in {root}: starting {what}", flush=True)
    stack: Stack | None = None
    cloud: demo_qemu.HubCloud | None = None
    machine: demo_qemu.QemuDevice | None = None
    agents: list[HostAgent] = []
    started_at: dict[str, float] = {}
    feeders: list[threading.Thread] = []
    events: queue.SimpleQueue[str] = queue.SimpleQueue()
    status = 0
    try:
        if args.qemu:
            image = args.image.resolve() if args.image else demo_qemu.reference_image()
            cloud = demo_qemu.HubCloud(root / "hub")
            cloud.start()
            send: Send = cloud.request
            api_url, ca, archive_dir = cloud.api_url, cloud.ca_cert, cloud.archive_dir
            cli = f"--url {api_url} --ca {ca} --token-file {cloud.token_file}"
            keys = f"CA and service keys in {cloud.hub.pki_dir}"
            registry = cloud.registry
            broker = (
                f"hub           namespace {cloud.hub.netns}: WireGuard :{demo_qemu.WG_PORT} on the"
                f" device's link, broker {demo_qemu.HUB_ADDRESS}"
                f" :{cloud.hub.info['management_port']} management,"
                f" :{cloud.hub.info['solution_port']} solution (TLS, client"
                " certificates only); the host agents run in the namespace too"
            )
        else:
            stack = Stack(root / "cloud")  # before any agent: HostAgent below needs it
            management, _solution = stack.start_all()
            assert management.api is not None
            send = _sender(management)
            api_url, ca, archive_dir = management.api.url, stack.pki.ca_cert, stack.archive_dir
            cli = " ".join(stack.api_options(management))
            keys = f"CA and service keys in {stack.pki.root}"
            registry = stack.registry_db
            broker = (
                f"broker        management :{stack.management_endpoint.port}, solution"
                f" :{stack.solution_endpoint.port} (TLS, client certificates only)"
            )
        login = _console_login(send, api_url)
        update = None
        if cloud is not None:
            print("preparing the update to try: a signed .swu of the next version", flush=True)
            update = demo_qemu.prepare_update(image, cloud)
        for i in range(args.devices):
            device_id = f"dev-{i + 1:03d}"
            where = root / "devices" / device_id
            if cloud is not None:
                agent: HostAgent = cloud.agent(device_id, where)
            else:
                assert stack is not None
                agent = HostAgent(stack, device_id, where)
            agent.start()
            agents.append(agent)
            started_at[device_id] = time.monotonic()
            feeder = threading.Thread(
                target=_feed, args=(agent, i, stop, args.period, events), daemon=True
            )
            feeder.start()
            feeders.append(feeder)
        if cloud is not None:
            print(f"provisioning {demo_qemu.QEMU_DEVICE}: a copy of {image}", flush=True)
            machine = demo_qemu.QemuDevice(cloud, image, root / "qemu", events)
            machine.start()
        kept = "kept" if not remove else "removed on exit; --keep keeps it"
        pinned = [
            f"console       {login[0]}  login: demo / {login[1]}  (the certificate is the"
            f" demo's own CA, {ca}: the browser asks before it trusts it)"
            if login
            else "console       (this management service serves none)",
            f"operator API  {api_url}",
            f"  CLI         {_cli()} devices {cli}",
            broker,
            f"folder        {root} ({kept})",
            f"  keys        {keys}; each host agent's in {root / 'devices'}/<id>",
            f"  registry    {registry}; archive {archive_dir}",
            *(f"device        {a.device_id}: agent pid {a.pid}, API {a.socket}" for a in agents),
        ]
        if machine is not None and update is not None:
            pinned += [
                f"device        {demo_qemu.QEMU_DEVICE}: the reference image in QEMU (TCG, OVMF),"
                f" through a WireGuard tunnel; serial console log {machine.console_log}."
                " Booting takes minutes under TCG: its row says booting until it is online.",
                f"UPDATE IT     in the console: Rollouts → artifact {update.version}"
                f" ({update.sha256[:12]}) → Target: devices → {demo_qemu.QEMU_DEVICE} → Create"
                f" rollout; the rollout's page and Devices → {demo_qemu.QEMU_DEVICE} show the"
                " job's state (downloading, installing, rebooting, verifying, succeeded: the new"
                " slot confirmed itself), the UPDATE column below its percentage."
                f"  The .swu: {update.swu}",
            ]
        pinned.append(
            "UP is the agent's uptime (a host agent's health reports the host's); SLOT none: no"
            " A/B slots on a host agent.  Ctrl-C stops everything."
        )
        live = False if args.plain else None
        starting[0] = False
        with Screen(pinned, live=live) as screen:
            get: Get = lambda path: send("GET", path, None)  # noqa: E731
            _watch(screen, get, archive_dir, agents, machine, started_at, events, stop, args)
    except demo_qemu.ERRORS as exc:
        print(f"demo: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("demo: stopped while starting", file=sys.stderr)
        status = 130
    finally:
        starting[0] = False
        stop.set()
        for feeder in feeders:
            feeder.join(timeout=5)
        if machine is not None:
            print(f"stopping QEMU ({demo_qemu.QEMU_DEVICE})", flush=True)
            machine.stop()
        print("stopping agents, services and broker", flush=True)
        for agent in reversed(agents):
            agent.stop()
            agent.close()
        if stack is not None:
            stack.stop()
        if cloud is not None:
            print("stopping the hub and removing its namespace", flush=True)
            cloud.stop()
        if remove:
            shutil.rmtree(root, ignore_errors=True)
            print(f"removed {root} and the keys in it")
        print("stopped cleanly")
    return status


def _sender(management: ServiceProcess) -> Send:
    def send(method: str, path: str, body: Any) -> tuple[int, Any]:
        return http_send(management, method, path, body)

    return send


def _watch(
    screen: Screen,
    get: Get,
    archive_dir: Path,
    agents: list[HostAgent],
    machine: demo_qemu.QemuDevice | None,
    started_at: dict[str, float],
    events: queue.SimpleQueue[str],
    stop: threading.Event,
    args: argparse.Namespace,
) -> None:
    """Until stopped: the events as they come, the table at every report."""
    started = time.monotonic()
    before = Snapshot()
    died: dict[str, str] = {}
    overdue: set[int] = set()  # boots of the QEMU device said to be slow
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
            after = snapshot(get)
            for line in changes(before, after):
                screen.event(line)
            if after.ok:
                before = after
            archive = _archive_counts(archive_dir)
            shown = dict(before.rows)
            if machine is not None:
                on = machine.powered_on_at
                device = demo_qemu.QEMU_DEVICE
                powered_for = None if on is None else now - on
                shown[device] = machine_row(shown.get(device), device, powered_for)
                boot = machine.boots
                if (
                    shown[device].machine
                    and powered_for is not None
                    and machine.overdue(powered_for)
                    and boot not in overdue
                ):
                    overdue.add(boot)
                    screen.event(
                        f"{device} not online {powered_for:.0f} s after power-on (boot {boot}):"
                        f" its serial console is in {machine.console_log}"
                    )
            rows = []
            for device, row in sorted(shown.items()):
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
