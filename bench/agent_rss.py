"""Agent resident memory after 60 s idle with both sessions up, against two baselines.

All of them run with the same interpreter (`--python`), in the same run:

- imports: a bare interpreter that has imported ssl, sqlite3 and paho-mqtt;
- floor: the agent's I/O without the agent: two paho clients (paho's own
  loop threads) connected with mutual TLS to the management and the solution
  listener, and three SQLite connections on a WAL database, as the agent
  holds them. What any Python agent of this design pays before its own code;
- the agent, started as the systemd unit starts it: the console script's
  code (`from twelvefactor_agent.cli import main`, not `python -m`, which
  loads runpy besides) with `run --config PATH`, and the unit's
  `Environment=` settings, which are printed. `--env NAME=VALUE` adds a
  setting on top, to try one before it goes into the unit;
- code: the imports baseline that has also imported the agent's daemon
  code (what `run` imports) and runs none of it: what the code costs loaded.

Each step is printed against the one below it, split into anonymous memory
and file-backed pages (library and interpreter code touched).

The floor and the agent idle side by side, so a burst of load hits both.
Target: agent RSS <= 25 MB.

The agent is this checkout's code (PYTHONPATH=agent/src), its modules
compiled with the chosen interpreter first, as an image ships them: a module
without bytecode is compiled at every start, which costs resident memory a
device never pays. The interpreter matters too: a pyenv build (this
project's .venv) carries about 1 MB more than a distribution's python3 for
the same imports, and the device runs a distribution build. `--python` runs
all of them with another interpreter, e.g. a venv made from /usr/bin/python3
with paho-mqtt 2.1.0 (the version the layer ships).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed.hostagent import HostAgent
from testbed.stack import Stack, wait_until

ROOT = Path(__file__).resolve().parent.parent
AGENT_SRC = ROOT / "agent" / "src"
UNIT = ROOT / "agent" / "systemd" / "twelvefactor-agent.service"
TARGET_MB = 25.0

# What the `twelvefactor-agent` console script runs (ExecStart of the unit).
CONSOLE_SCRIPT = "import sys; from twelvefactor_agent.cli import main; sys.exit(main())"
# The baseline's imports, and the same with the daemon's code imported (cli.run
# imports twelvefactor_agent.agent, which imports the rest of the daemon).
IMPORTS = "import ssl, sqlite3, paho.mqtt.client, time"
CODE = IMPORTS + "; import twelvefactor_agent.cli, twelvefactor_agent.agent"

FLOOR = r"""
import sqlite3, ssl, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

cert, key, ca, data = sys.argv[1:5]
clients = []
for host, port, client_id in zip(sys.argv[5::3], sys.argv[6::3], sys.argv[7::3]):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=ca)
    ctx.load_cert_chain(cert, key)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set_context(ctx)
    client.connect(host, int(port))
    client.loop_start()
    clients.append(client)
dbs = []
for _ in range(3):
    db = sqlite3.connect(data + "/floor.db", isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA cache_size = -512")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (seq INTEGER PRIMARY KEY AUTOINCREMENT, b BLOB)")
    db.execute("SELECT * FROM t").fetchall()
    dbs.append(db)
while all(c.is_connected() for c in clients):
    time.sleep(1)
sys.exit("floor: a session dropped")
"""


class UnitAgent(HostAgent):
    """The host agent, started as the unit's ExecStart starts it."""

    def start(self, timeout: float = 60.0) -> None:
        argv = [self.python, "-c", CONSOLE_SCRIPT, "run", "--config", str(self.config_file)]
        self._spawn(argv, self._answers, timeout)


def status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile (kB) and Threads of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "Threads"):
            out[name] = int(value.split()[0])
    return out


def unit_environment() -> dict[str, str]:
    """The `Environment=` settings of the agent's systemd unit."""
    env = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            for item in line.removeprefix("Environment=").split():
                name, _, value = item.strip('"').partition("=")
                env[name] = value
    return env


def imported(python: str, imports: str) -> dict[str, int]:
    """The status of an interpreter that has run `imports` and sleeps."""
    proc = subprocess.Popen(
        [python, "-c", imports + "; print(flush=True); time.sleep(60)"], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline() != b"\n":
            raise RuntimeError(f"{imports!r} failed with status {proc.wait()}")
        time.sleep(1)
        return status(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def show(name: str, st: dict[str, int]) -> str:
    return (
        f"{name:<44} {st['VmRSS'] / 1024:6.1f} MB"
        f"  (anon {st['RssAnon'] / 1024:4.1f}, file {st['RssFile'] / 1024:4.1f},"
        f" {st['Threads']} threads)"
    )


def step(name: str, upper: dict[str, int], lower: dict[str, int]) -> str:
    """What one process holds beyond another, anonymous and file-backed."""
    anon = (upper["RssAnon"] - lower["RssAnon"]) / 1024
    file = (upper["RssFile"] - lower["RssFile"]) / 1024
    return f"{name:<44} {anon + file:+6.2f} MB  (anon {anon:+5.2f}, file {file:+5.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds idle before measuring")
    parser.add_argument("--python", default=sys.executable, help="interpreter to run them all")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment setting on top of the unit's (repeatable), for all of them",
    )
    args = parser.parse_args()
    extra = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env {item!r}: expected NAME=VALUE")
        extra[name] = value
    subprocess.run(
        [args.python, "-m", "compileall", "-q", str(AGENT_SRC / "twelvefactor_agent")], check=True
    )
    env = unit_environment()
    # Children inherit it: the agent (HostAgent), the floor and the imports baseline.
    os.environ.update(env)
    os.environ.update(extra)
    os.environ["PYTHONPATH"] = str(AGENT_SRC)
    base = imported(args.python, IMPORTS)
    code = imported(args.python, CODE)
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        stack = Stack(Path(tmp) / "cloud")
        stack.start_all()
        agent = UnitAgent(
            stack, "bench-rss", Path(tmp) / "agent", health_interval=10, python=args.python
        )
        identity = stack.device("bench-floor")
        m, s = stack.management_endpoint, stack.solution_endpoint
        floor = subprocess.Popen(
            [
                args.python,
                "-c",
                FLOOR,
                *(str(p) for p in (identity.cert, identity.key, identity.ca)),
                tmp,
                *(m.host, str(m.port), "bench-floor-mgmt"),
                *(s.host, str(s.port), "bench-floor-sol"),
            ]
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
            if floor.poll() is not None:
                raise RuntimeError(f"the floor process ended with status {floor.returncode}")
            rss, floor_rss = status(agent.pid), status(floor.pid)
            load = os.getloadavg()
        finally:
            floor.kill()
            floor.wait()
            agent.stop()
            agent.close()
            stack.stop()
    print(f"interpreter: {args.python} (agent from {AGENT_SRC}, compiled)")
    unit_env = " ".join(f"{k}={v}" for k, v in env.items()) or "none"
    print(f"environment from {UNIT.name}: {unit_env}")
    if extra:
        print("environment added (--env): " + " ".join(f"{k}={v}" for k, v in extra.items()))
    print(f"load average at the measurement: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(show("imports (python + paho + ssl + sqlite3):", base))
    print(show("floor (two TLS sessions + 3 SQLite conns):", floor_rss))
    print(show(f"agent after {args.idle:.0f} s idle, both sessions up:", rss))
    print(show("code (imports + the daemon's modules):", code))
    print(step("floor - imports:", floor_rss, base))
    print(step("code - imports (importing the daemon):", code, base))
    print(step("agent - floor:", rss, floor_rss))
    mb = rss["VmRSS"] / 1024
    verdict = "met" if mb <= TARGET_MB else "NOT met"
    print(
        f"agent - imports: {(rss['VmRSS'] - base['VmRSS']) / 1024:.1f} MB;"
        f" agent - floor: {(rss['VmRSS'] - floor_rss['VmRSS']) / 1024:.1f} MB;"
        f" ratio agent/imports {rss['VmRSS'] / base['VmRSS']:.2f}"
    )
    print(f"target <= {TARGET_MB:.0f} MB: {verdict} ({mb:.1f} MB)")


if __name__ == "__main__":
    main()
