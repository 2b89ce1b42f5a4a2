"""The shipped hub (`twelvefactor-hub serve`) started in a network namespace,
as an operator runs it on a hub host: the boot tier's hub and the network
tier's lab both stand on this one start-up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testbed.proc import TestbedError, stop, tail

START_TIMEOUT = 120.0


def start_hub(
    netns: str, root: Path, interface: str, log: Path
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """The hub of `root` (made by `hub.service.init`) serving in `netns` on a new
    WireGuard `interface`; its process and hub.json, once everything is up."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                *("ip", "netns", "exec", netns, sys.executable),
                *("-m", "twelvefactor_services.hub", "serve", str(root)),
                *("--interface", interface),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    info = root / "hub.json"
    deadline = time.monotonic() + START_TIMEOUT
    while not info.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise TestbedError(f"the hub did not start in {netns}:\n{tail(log)}")
        time.sleep(0.2)
    return proc, json.loads(info.read_text())
