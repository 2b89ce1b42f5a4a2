"""The main job: the demo shows both devices online with health and archived data, says
what happened when an agent is killed (once, not a line per try of its application),
and Ctrl-C (SIGINT) stops everything cleanly and removes its folder and keys."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from testbed.pace import PACE, REFERENCE

# The demo until both devices show health and data, one is killed and shown offline:
# measured 6.5 s on the reference machine (its broker, two services and two agents start
# as a Stack's do, then a health report and a data point each, at --period 0.5).
DEMO_SHOWN = 6.5

PID = re.compile(r"^device\s+(dev-\d{3}): agent pid (\d+)")
FOLDER = re.compile(r"^folder\s+(\S+) \(removed on exit")


def row(line: str) -> list[str] | None:
    """A device row of the plain table: its cells (two or more spaces apart)."""
    if not re.match(r"^  dev-\d{3}\s", line):
        return None
    return re.split(r"\s{2,}", line.strip())


def test_demo_shows_devices_reports_a_killed_agent_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.demo", "--period", "0.5", "--report-every", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its temporary folder, to see it go
    )
    assert proc.stdout is not None
    pids: dict[str, int] = {}
    folder = ""
    seen: dict[str, list[str]] = {}
    output: list[str] = []
    # the output read in a thread, so that a silent demo ends at the limit too
    lines: queue.Queue[str | None] = queue.Queue()

    def read(out: IO[str]) -> None:
        for line in out:
            lines.put(line)
        lines.put(None)  # the demo closed its output: it ended

    threading.Thread(target=read, args=(proc.stdout,), daemon=True).start()
    limit = PACE.limit(DEMO_SHOWN)
    deadline = time.monotonic() + limit
    killed = False
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            output.append(line)
            if m := PID.match(line):
                pids[m.group(1)] = int(m.group(2))
            if m := FOLDER.match(line):
                folder = m.group(1)
            cells = row(line)
            # LOAD is shown once a health report reached the management service
            if cells and cells[1] == "online" and cells[5] != "-" and int(cells[8]) > 0:
                seen[cells[0]] = cells
            if len(seen) == 2 and not killed:
                os.kill(pids["dev-002"], signal.SIGKILL)
                killed = True
            if "dev-002 OFFLINE" in line:
                break
        text = "".join(output)
        assert "dev-002 OFFLINE" in text, f"not within {limit:.0f} s ({PACE.summary()[0]}):\n{text}"
        assert set(seen) == {"dev-001", "dev-002"}, text
        assert seen["dev-001"][3] == "none", text  # a host agent has no A/B slots
        console = r"^console\s+https://127\.0\.0\.1:\d+/console/  login: demo / \S+"
        assert re.search(console, text, re.M), text
        assert "operator API  https://" in text
        assert "dev-002 agent died: killed by SIGKILL" in text, text
        assert "dev-002 OFFLINE (lost)" in text, text
        proc.send_signal(signal.SIGINT)
        proc.wait(PACE.steps_of("services", 2))  # a clean stop: the services' and agents'
        rest = ""
        while (line := lines.get(timeout=PACE.limit(REFERENCE["cli"]))) is not None:
            rest += line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert rest.count("local API unreachable") + text.count("local API unreachable") == 1
    assert "stopped cleanly" in rest
    assert folder.startswith(str(tmp_path)) and not Path(folder).exists()
    assert f"removed {folder} and the keys in it" in rest
    # Nothing left running: the broker and every agent were children of the demo.
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True
    ).stdout.split()
    assert leftovers == []
