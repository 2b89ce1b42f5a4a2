"""Agent resident memory after 60 s idle with both sessions up, against a baseline.

The baseline is a bare Python interpreter that has imported paho-mqtt and
ssl, measured in the same run: what any Python MQTT client costs before doing
anything. Target: agent RSS <= 25 MB.

The interpreter matters: a pyenv build (as in this project's .venv) carries
about 4 MB more than a distribution's python3 for the same imports, and the
device runs a distribution build (Yocto's or Debian's). `--python` runs the
agent and the baseline with another interpreter, e.g. a venv made from
/usr/bin/python3 with paho-mqtt 2.1.0 and the agent installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twelvefactor_services.hostagent import HostAgent
from twelvefactor_services.launcher import Stack, wait_until


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def baseline_kb(python: str) -> int:
    proc = subprocess.Popen(
        [python, "-c", "import ssl, sqlite3, paho.mqtt.client, time; time.sleep(30)"]
    )
    try:
        time.sleep(3)
        return rss_kb(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds idle before measuring")
    parser.add_argument("--python", default=sys.executable, help="interpreter to run the agent")
    args = parser.parse_args()
    base = baseline_kb(args.python)
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        stack = Stack(Path(tmp) / "cloud")
        stack.start_all()
        agent = HostAgent(
            stack, "bench-rss", Path(tmp) / "agent", health_interval=10, python=args.python
        )
        try:
            agent.start()
            client = agent.client()
            wait_until(
                lambda: (
                    client.status()["management"] == "online"
                    and client.status()["solution"] == "online"
                ),
                timeout=60,
                what="both sessions online",
            )
            time.sleep(args.idle)
            assert agent.pid is not None
            rss = rss_kb(agent.pid)
        finally:
            agent.stop()
            agent.close()
            stack.stop()
    print(f"interpreter: {args.python}")
    print(f"baseline (python + paho + ssl + sqlite3 imported): {base / 1024:6.1f} MB")
    print(f"agent after {args.idle:.0f} s idle, both sessions up:   {rss / 1024:6.1f} MB")
    verdict = "met" if rss <= 25 * 1024 else "NOT met"
    print(f"ratio agent/baseline: {rss / base:.2f}; target <= 25 MB: {verdict}")


if __name__ == "__main__":
    main()
