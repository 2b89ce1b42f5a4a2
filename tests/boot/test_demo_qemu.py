"""`scripts/demo --qemu` (testbed/demo.py, testbed/demo_qemu.py): one boot of the QEMU
device, online in the same fleet as the host agents, the console answering on the host.

The demo runs as a user runs it (`python -m testbed.demo --qemu`), in plain mode so
its lines can be read; the test reads the operator API through the address, CA and
token the demo prints, as the CLI line it prints would. Every wait follows this run's
pace: the demo's own --duration is a boot's limit (pace.py) beyond the hub's start,
and the QEMU device's power-on to online is recorded as a boot of this run. No update
here (one boot only: the tier's time budget); the rollout is the operator's to try.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import require_root, require_tool
from twelvefactor_services.management.api_client import ManagementClient

from testbed.boot.pace import PACE, REFERENCE_BOOT
from testbed.boot.vm import COMMAND_SECONDS
from testbed.demo_qemu import QEMU_DEVICE, TOOLS
from testbed.shipped_hub import START_TIMEOUT

HOST_AGENTS = ("dev-001", "dev-002")


class Lines:
    """The demo's output, line by line, read by a thread; everything read so far kept."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.ended = False
        assert proc.stdout is not None
        out = proc.stdout

        def read() -> None:
            for line in out:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=read, daemon=True).start()

    def until(self, pattern: str, proc: subprocess.Popen[str]) -> re.Match[str]:
        """The first line (seen or to come) matching `pattern`; the demo ends by itself
        (its --duration) if it never comes."""
        regex = re.compile(pattern)
        for line in self.seen:
            if m := regex.search(line):
                return m
        while not self.ended:
            line = self._queue.get()
            if line is None:
                self.ended = True
                break
            self.seen.append(line)
            if m := regex.search(line):
                return m
        tail = "\n".join(self.seen[-60:])
        pytest.fail(f"the demo ended ({proc.poll()}) before /{pattern}/:\n{tail}", pytrace=False)

    def drain(self) -> None:
        while not self._queue.empty():
            line = self._queue.get()
            if line is None:
                self.ended = True
            else:
                self.seen.append(line)


def test_demo_qemu_device_online_beside_the_host_agents(boot_image: Path) -> None:
    require_root()
    for tool in TOOLS:
        require_tool(tool)
    # the demo stops by itself after the hub's start and a boot's limit at this run's pace
    duration = START_TIMEOUT + PACE.limit(REFERENCE_BOOT)
    argv = [sys.executable, "-m", "testbed.demo", "--qemu", "--plain", "--image", str(boot_image)]
    proc = subprocess.Popen(
        [*argv, "--duration", f"{duration:.0f}", "--report-every", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = Lines(proc)
    try:
        folder = Path(lines.until(r"^folder +(\S+) \(removed on exit", proc).group(1))
        cli = lines.until(r"--url (\S+) --ca (\S+) --token-file (\S+)", proc)
        url, ca, token_file = cli.group(1), Path(cli.group(2)), Path(cli.group(3))
        console = lines.until(r"^console +(https://\S+/console/) +login: demo / (\S+)", proc)
        namespace = lines.until(r"^hub +namespace (\S+):", proc).group(1)
        lines.until(rf"^\s+{QEMU_DEVICE} +booting \d+ s", proc)  # in view while it boots
        powered_on = time.monotonic()
        lines.until(rf"{QEMU_DEVICE} powered on \(boot 1\)", proc)

        # one API call or page: a command's limit at this run's boot pace (not a fixed guess)
        request_limit = PACE.limit(COMMAND_SECONDS)
        api = ManagementClient(
            url, token=token_file.read_text().strip(), ca=ca, timeout=request_limit
        )
        deadline = powered_on + PACE.limit(REFERENCE_BOOT)
        online: dict[str, bool] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            status, devices = api.request("GET", "/devices")
            assert status == 200, devices
            online = {d["id"]: bool(d.get("online")) for d in devices}
            if online.get(QEMU_DEVICE) and all(online.get(d) for d in HOST_AGENTS):
                break
            time.sleep(1)
        seconds = time.monotonic() - powered_on
        lines.drain()
        assert online.get(QEMU_DEVICE), (online, "\n".join(lines.seen[-40:]))
        assert all(online.get(d) for d in HOST_AGENTS), online
        PACE.record("demo --qemu: first boot (power-on to online, seen by the API)", seconds)
        status, record = api.request("GET", f"/devices/{QEMU_DEVICE}")
        assert status == 200 and record["meta"]["slot"] in ("A", "B"), record
        # the update the pinned lines name is there, for the device's hardware
        update = lines.until(r"Rollouts → artifact (\S+) \(([0-9a-f]{12})\)", proc)
        status, artifacts = api.request("GET", "/artifacts")
        assert status == 200
        assert [a["version"] for a in artifacts if a["sha256"].startswith(update.group(2))] == [
            update.group(1)
        ], artifacts

        # the console's address answers over HTTPS from the host, with the demo's CA
        context = ssl.create_default_context(cafile=str(ca))
        with urllib.request.urlopen(
            console.group(1), context=context, timeout=request_limit
        ) as page:
            assert page.status == 200
            assert "<html" in page.read().decode().lower()
        status, login = api.request(
            "POST", "/login", {"name": "demo", "password": console.group(2)}
        )
        assert status == 201 and login.get("token"), login

        # Ctrl-C: QEMU, agents, hub and namespace stopped, the folder removed
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=PACE.limit(COMMAND_SECONDS))
        lines.until("stopped cleanly", proc)
        assert proc.returncode == 0, "\n".join(lines.seen[-30:])
        assert not folder.exists()
        # the hub's namespace and its link's neighbour (tfboot-N, tfinet-N) are gone
        tag = namespace.rpartition("-")[2]
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        left = [line.split()[0] for line in listed.splitlines() if line]
        assert not [name for name in left if name.endswith(f"-{tag}")], left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
