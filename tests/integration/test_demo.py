"""The main job: the demo shows both devices online with health and archived data,
and Ctrl-C (SIGINT) stops everything cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROW = re.compile(r"^\s+(dev-\d{3})\s+online\s.*uptime\s+(\d+) s.*archived\s+(\d+)$")


def test_demo_shows_devices_online_with_data_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "testbed.demo",
            "--dir",
            str(tmp_path),
            "--period",
            "0.5",
            "--report-every",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen: dict[str, int] = {}
    output: list[str] = []
    deadline = time.monotonic() + 120
    try:
        for line in proc.stdout:
            output.append(line)
            m = ROW.match(line.rstrip())
            # uptime > 0 means a health report has arrived at the management service
            if m and int(m.group(2)) > 0 and int(m.group(3)) > 0:
                seen[m.group(1)] = int(m.group(3))
            if len(seen) == 2 or time.monotonic() > deadline:
                break
        assert set(seen) == {"dev-001", "dev-002"}, "".join(output)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "stopped cleanly" in rest
    # Nothing left running: the broker and every agent were children of the demo.
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True
    ).stdout.split()
    assert leftovers == []
