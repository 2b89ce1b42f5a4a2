"""One run of the fleet simulator against the real stack, and its figures (bench/fleet.py).

The order of a run, the figures and their targets are described in
bench/fleet.py and docs/scale.md. Every wait here fails on a stall, not on
slowness: when its count has not moved for FACTOR times the longest step this
run has already measured (plus the protocol's own timers), never on a fixed
guess.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from twelvefactor_agent.config.settings import _SCHEMA as AGENT_SETTINGS
from twelvefactor_agent.session.mqtt import CONNECT_TIMEOUT
from twelvefactor_services.artifact.swu import newc_archive

from testbed.fleet.sim import DeviceSpec, SimSettings, run_worker
from testbed.fleet.watch import (
    ApiProbe,
    RegistryWatch,
    archive_seqs,
    cpu_seconds,
    health_samples,
    percentile,
    solution_counts,
)
from testbed.pace import PACE
from testbed.postgres import Postgres
from testbed.stack import Stack

# A wait fails when its count has not moved for FACTOR times the longest time this run
# has already needed for the same kind of step (plus the protocol's own timers).
FACTOR = 3.0
TARGETS = {
    "health p99 (s)": 1.0,
    "online after restart (s)": 60.0,
    "api p99 (s)": 0.2,
}
SWU_DESCRIPTION = """software = {{ version = "{version}";
  qemux86-64 = {{ hardware-compatibility: [ "1.0" ]; }}; }};"""


def agent_default(table: str, key: str) -> float:
    value = AGENT_SETTINGS[table][key].default
    assert isinstance(value, int | float)
    return float(value)


@dataclass
class Options:
    devices: int
    seconds: float
    health_interval: float
    data_interval: float
    workers: int
    connect_threads: int
    payload_bytes: int
    work: Path
    profile: Path | None = None  # py-spy's samples of the services go here (collapsed stacks)
    # both services' stores: "sqlite" or "postgresql" (a server of the run's own, testbed/postgres)
    database: str = "sqlite"
    # the operator API probed on a management copy of its own that takes no device messages
    # (--no-consume), beside the copy that consumes; False: the consuming copy's own API
    api_copy: bool = False
    keepalive: int = int(agent_default("agent", "keepalive"))
    backoff: tuple[float, float, float] = (
        agent_default("backoff", "initial"),
        agent_default("backoff", "multiplier"),
        agent_default("backoff", "cap"),
    )

    def check(self) -> None:
        if self.devices < 1:
            raise ValueError(f"--devices must be at least 1, got {self.devices}")
        if self.devices > 99_999:
            raise ValueError(f"--devices must be at most 99999, got {self.devices}")
        if self.seconds <= 0:
            raise ValueError(f"--seconds must be positive, got {self.seconds}")
        if self.health_interval <= 0 or self.data_interval <= 0:
            raise ValueError("--health-interval and --data-interval must be positive")
        if not 1 <= self.workers <= 64:
            raise ValueError(f"--workers must be in 1..64, got {self.workers}")
        if not 1 <= self.connect_threads <= 64:
            raise ValueError(f"--connect-threads must be in 1..64, got {self.connect_threads}")


@dataclass
class Fleet:
    """The worker processes and what they report."""

    conns: list[Connection]
    procs: list[Any]
    ups: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    downs: dict[tuple[str, str], float] = field(default_factory=dict)  # the last one
    jobs: dict[str, dict[str, float]] = field(default_factory=dict)  # job -> device -> time
    job_ends: dict[str, dict[str, str]] = field(default_factory=dict)
    finals: list[tuple[dict[str, Any], float, int, float]] = field(default_factory=list)
    tallies: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="fleet-events", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        open_conns = list(self.conns)
        while open_conns:
            for conn in wait(open_conns, timeout=1.0):
                assert isinstance(conn, Connection)
                try:
                    msg = conn.recv()
                except EOFError:
                    open_conns.remove(conn)
                    continue
                with self.lock:
                    if msg[0] == "events":
                        for event in msg[1]:
                            self._event(event)
                    elif msg[0] == "tally":
                        self.tallies.append(msg[1])
                    elif msg[0] == "final":
                        self.finals.append((msg[1], msg[2], msg[3], msg[4]))
                        open_conns.remove(conn)

    def _event(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "up":
            self.ups.setdefault((event[1], event[2]), []).append(event[3])
        elif kind == "down":
            self.downs[(event[1], event[2])] = event[3]
        elif kind == "job":
            self.jobs.setdefault(event[2], {})[event[1]] = event[3]
        elif kind == "job_end":
            self.job_ends.setdefault(event[2], {})[event[1]] = event[3]

    def send(self, command: tuple[Any, ...]) -> None:
        for conn in self.conns:
            conn.send(command)

    def sessions_up_since(self, since: float) -> int:
        """Sessions up now that came up at or after ``since``."""
        with self.lock:
            return sum(
                1
                for session, times in self.ups.items()
                if times and times[-1] >= since and self.downs.get(session, 0.0) <= times[-1]
            )

    def last_up(self) -> float:
        with self.lock:
            return max(times[-1] for times in self.ups.values())

    def tally(self, timeout: float) -> dict[str, Any]:
        with self.lock:
            self.tallies.clear()
        self.send(("tally",))
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.tallies) == len(self.conns):
                    merged: dict[str, Any] = {}
                    for t in self.tallies:
                        merged.update(t)
                    return merged
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not answer a tally within {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self, timeout: float) -> None:
        self.send(("stop",))
        self._thread.join(timeout)
        for p in self.procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()


def start_fleet(stack: Stack, ids: list[str], opts: Options) -> Fleet:
    settings = SimSettings(
        host=stack.management_endpoint.host,
        management_port=stack.management_endpoint.port,
        solution_port=stack.solution_endpoint.port,
        health_interval=opts.health_interval,
        keepalive=opts.keepalive,
        backoff_initial=opts.backoff[0],
        backoff_multiplier=opts.backoff[1],
        backoff_cap=opts.backoff[2],
        connect_threads=opts.connect_threads,
        payload_bytes=opts.payload_bytes,
        seed=1,
    )
    specs = []
    for device in ids:
        paths = stack.pki.device_paths(device)
        specs.append(DeviceSpec(device, str(paths.cert), str(paths.key), str(paths.ca)))
    ctx = multiprocessing.get_context("spawn")
    conns, procs = [], []
    for w in range(opts.workers):
        mine = specs[w :: opts.workers]
        if not mine:
            continue
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=run_worker, args=(mine, settings, child), name=f"fleet-{w}")
        proc.start()
        child.close()
        conns.append(parent)
        procs.append(proc)
    return Fleet(conns, procs)


def wait_for(
    count: Callable[[], int], target: int, stall: float, what: str, poll: float = 0.1
) -> float:
    """Wait until ``count() >= target``; the time.time() it was reached.

    Fails if the count stays put for ``stall`` seconds (no progress, not slowness)."""
    last, moved = count(), time.monotonic()
    while last < target:
        time.sleep(poll)
        now_count = count()
        if now_count != last:
            last, moved = now_count, time.monotonic()
        elif time.monotonic() - moved > stall:
            raise TimeoutError(f"{what}: stuck at {last} of {target} for {stall:.0f} s")
    return time.time()


def all_back(
    fleet: Fleet, watch: RegistryWatch, devices: int, since: float, stall: float, what: str
) -> tuple[float, float]:
    """When every device had both sessions up again, and when the registry had seen every
    one, after `since` (a connect storm: the first start, or the broker's restart)."""
    up_at = wait_for(lambda: fleet.sessions_up_since(since), 2 * devices, stall, f"{what}: up")
    seen_at = wait_for(
        lambda: watch.devices_seen_since(since), devices, stall, f"{what}: registry has all"
    )
    return up_at, seen_at


def make_artifact(stack: Stack, work: Path) -> str:
    """A new .swu (version 2.0 for qemux86-64 1.0) added through the CLI: its sha256."""
    swu = work / "fleet-2.0.swu"
    desc = SWU_DESCRIPTION.format(version="2.0").encode()
    swu.write_bytes(newc_archive([("sw-description", desc), ("rootfs.zlib", os.urandom(200_000))]))
    svc = next(s for s in stack.services if s.api is not None)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "twelvefactor_services.management.cli"),
            *("artifact", "add", "--json", str(swu), *stack.api_options(svc)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"artifact add failed: {done.stderr.strip()}")
    return str(json.loads(done.stdout)["sha256"])


def certificates(stack: Stack, ids: list[str]) -> tuple[int, float]:
    """Each device's certificate, made now if the work folder has none: (made, seconds)."""
    started = time.perf_counter()
    made = 0
    for device in ids:
        if not stack.pki.device_paths(device).cert.exists():
            stack.device(device)
            made += 1
    return made, time.perf_counter() - started


def profile(out: Path, pid: int | None) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (100 Hz, every thread, without pausing it) into ``out``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if pid is None or not Path(spy).exists():
        raise RuntimeError("profiling needs py-spy (pip install py-spy) and a running process")
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [spy, "record", "-p", str(pid), "-r", "100", "--threads", "--nonblocking"]
    argv += ["-f", "raw", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fresh_stack(work: Path, server: Postgres | None = None) -> Stack:
    """The stack in ``work``: the PKI (and the devices' certificates) kept, all state new
    (with ``server``, both stores in new databases of it)."""
    for folder in ("broker", "management", "solution"):
        shutil.rmtree(work / folder, ignore_errors=True)
    if server is None:
        return Stack(work)
    return Stack(
        work, solution_database=server.new_database(), management_database=server.new_database()
    )


class Cpu:
    """CPU seconds per process over the run (a restarted broker's time adds up)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._start: dict[str, tuple[int, float]] = {}

    def begin(self, name: str, pid: int | None) -> None:
        at = cpu_seconds(pid)
        if pid is not None and at is not None:
            self._start[name] = (pid, at)

    def measuring(self) -> list[str]:
        """The processes begun and not ended yet."""
        return list(self._start)

    def end(self, name: str) -> None:
        pid, at = self._start.pop(name, (None, 0.0))
        now = cpu_seconds(pid)
        if now is not None:
            self.spent[name] = self.spent.get(name, 0.0) + now - at


def run(opts: Options) -> dict[str, Any]:
    """One run; the figures by name (see ``table``)."""
    opts.check()
    work = opts.work / f"n{opts.devices}"
    figures: dict[str, Any] = {"devices": opts.devices, "workers": opts.workers}
    ids = [f"sim-{i:05d}" for i in range(1, opts.devices + 1)]
    started = time.perf_counter()
    server = Postgres() if opts.database == "postgresql" else None
    if server is not None:
        server.start()
    figures["database"] = opts.database
    stack = fresh_stack(work, server)
    made, took = certificates(stack, ids)
    figures["certificates made"] = made
    figures["certificates (s)"] = took
    cpu = Cpu()
    fleet: Fleet | None = None
    profilers: list[subprocess.Popen[bytes]] = []
    watch = RegistryWatch(stack.registry_db)
    probe: ApiProbe | None = None
    try:
        t = time.perf_counter()
        management, solution = stack.start_all()
        stack_start = time.perf_counter() - t
        figures["stack start (s)"] = stack_start
        figures["api"] = "a copy of its own" if opts.api_copy else "the consuming copy"
        operator = management
        if opts.api_copy:
            operator = stack.management(consume=False)
            operator.start(PACE.steps_of("services"))  # as start_all starts its copies
            cpu.begin("management api", operator.pid)
        for name, pid in (
            ("broker", stack.broker.pid),
            ("management", management.pid),
            ("solution", solution.pid),
        ):
            cpu.begin(name, pid)
        if opts.profile is not None:
            profilers = [
                profile(opts.profile / f"{name}-n{opts.devices}.txt", pid)
                for name, pid in (("management", management.pid), ("solution", solution.pid))
            ]
        watch.start()
        assert operator.api is not None
        probe = ApiProbe(operator.api.url, stack.admin_token(), stack.pki.ca_cert, ids)
        probe.prepare()
        # 1. initial connect
        connect_stall = FACTOR * (stack_start + CONNECT_TIMEOUT + opts.backoff[2])
        t0 = time.time()
        fleet = start_fleet(stack, ids, opts)
        up_at, seen_at = all_back(fleet, watch, len(ids), t0, connect_stall, "initial")
        figures["initial: all sessions up (s)"] = up_at - t0
        figures["initial: registry has all (s)"] = seen_at - t0
        slowest = max(up_at, seen_at) - t0  # the longest step so far: the measure of stalls
        probe.start()
        # 2. steady state
        fleet.send(("data", opts.data_interval))
        steady_from = time.time()
        time.sleep(opts.seconds)
        steady_to = time.time()
        lat = watch.latencies_between(steady_from, steady_to)
        figures["health records (steady)"] = len(lat)
        figures["health p50 (s)"] = percentile(lat, 50)
        figures["health p99 (s)"] = percentile(lat, 99)
        figures["health max (s)"] = max(lat)
        figures["registry poll (s)"] = watch.interval
        # 3. a rollout to every device, one phase
        sha = make_artifact(stack, work)
        api = operator.api
        t_roll = time.time()
        status, made_r = api.request(
            "POST", "/rollouts", {"artifact": sha, "devices": ids, "phases": [{"percent": 100}]}
        )
        if status != 201:
            raise RuntimeError(f"rollout create answered {status}: {made_r}")
        rid = made_r["id"]
        stall = FACTOR * max(slowest, stack_start)

        def reached() -> int:
            with fleet.lock:  # devices that received a job (one job each, made by the rollout)
                return len({device for got in fleet.jobs.values() for device in got})

        reach_at = wait_for(reached, len(ids), stall, "rollout: every device has its job")
        figures["rollout: phase 1 reached all (s)"] = reach_at - t_roll

        def succeeded() -> int:
            code, r = api.request("GET", f"/rollouts/{rid}")
            if code != 200:
                return 0
            return sum(1 for d in r["devices"] if d["state"] == "succeeded")

        done_at = wait_for(succeeded, len(ids), stall, "rollout: all succeeded", poll=1.0)
        figures["rollout: all succeeded (s)"] = done_at - t_roll
        slowest = max(slowest, done_at - t_roll)
        # 4. broker restart: the connect storm
        cpu.end("broker")
        t_stop = time.time()
        stack.broker.stop()
        stack.broker.start()
        t_up = time.time()
        cpu.begin("broker", stack.broker.pid)
        figures["broker restart (s)"] = t_up - t_stop
        up_at, seen_at = all_back(fleet, watch, len(ids), t_stop, connect_stall, "restart")
        figures["restart: all sessions up (s)"] = up_at - t_up
        figures["restart: registry has all (s)"] = seen_at - t_up
        slowest = max(slowest, seen_at - t_up)
        # 5. data stopped; everything sent must be in the archive
        fleet.send(("data", 0))
        fleet.send(("health off",))
        data_to = time.time()
        stall = FACTOR * max(slowest, stack_start)
        tally = fleet.tally(stall)
        sent = sum(d["seq"] for d in tally.values())

        def in_archive() -> int:
            accepted, owed = solution_counts(stack.solution_db)
            return accepted - owed

        archived_at = wait_for(in_archive, sent, stall, "archive holds every message", poll=0.5)
        figures["data sent"] = sent
        figures["data offered (msg/s)"] = sent / (data_to - steady_from)
        figures["data ingest (msg/s)"] = sent / (archived_at - steady_from)
        figures["data drain after stop (s)"] = archived_at - data_to
        probe.stop()

        def all_heard() -> int:  # devices with no report kept unheard (session/unheard.py)
            return sum(1 for d in fleet.tally(stall).values() if not d["health_kept"])

        try:
            wait_for(all_heard, len(ids), stall, "health: every kept report heard", poll=0.5)
        except TimeoutError as exc:
            figures["health: kept reports unheard at the end"] = str(exc)
        tally = fleet.tally(stall)
        missing = duplicates = 0
        for device, d in tally.items():
            seqs = archive_seqs(stack.archive_dir, device)
            mine = seqs.get(d["queue_id"], set())
            missing += len(set(range(1, d["seq"] + 1)) - mine)
            duplicates += sum(len(v) for q, v in seqs.items() if q != d["queue_id"])
        figures["loss: data missing"] = missing
        figures["loss: data foreign"] = duplicates
        # Health is off; the management service may still be writing what it was given (a
        # loaded machine, PostgreSQL): wait until each device's last acknowledged report is
        # in the registry (reports of one device arrive in order). A device whose last is
        # never recorded is counted below as a loss, not waited for past the stall.
        last_acked = {dev: max(d["health_acked_ts"], default=None) for dev, d in tally.items()}

        def caught_up() -> int:
            seen = health_samples(stack.registry_db, t0)
            return sum(1 for dev, ts in last_acked.items() if ts is None or ts in seen.get(dev, ()))

        try:
            wait_for(
                caught_up,
                len(last_acked),
                stall,
                "health: the registry has the last report",
                poll=0.5,
            )
        except TimeoutError as exc:
            figures["health: registry behind at the end"] = str(exc)
        recorded = health_samples(stack.registry_db, t0)
        acked = sum(d["health_acked"] for d in tally.values())
        figures["health heard (PUBACK success)"] = acked
        # PUBACK 0x10: the broker had no subscriber; the device kept it and sent it again
        for name, key in (
            ("health answered 'no subscriber'", "health_unheard"),
            ("health sent again", "health_again"),
            ("loss: health, never heard", "health_kept"),
            ("loss: health, dropped unheard", "health_dropped"),
        ):
            figures[name] = sum(d[key] for d in tally.values())
        figures["health recorded"] = sum(len(v) for v in recorded.values())
        # The broker drops what nobody subscribes to: between the broker's restart and the
        # management service's new subscription (clean start), health has nowhere to go (the
        # device keeps it and sends it again: session/unheard.py), and what the broker had
        # acknowledged but not yet handed to the (lagging) service at the stop is gone.
        # Per device, such a loss is a gap in its recorded health
        # that spans the restart: after the last report recorded from before the broker
        # was back (some sent after the stop was asked reach the service while the broker
        # shuts down: seen in CI, one lost just after one of those was recorded), before
        # the first recorded from after it (one device's reports arrive in order). Any
        # other gap is a loss the restart does not explain.
        in_window: list[float] = []
        outside: list[float] = []
        for dev, d in tally.items():
            seen = recorded.get(dev, set())
            opens = max((ts for ts in seen if ts < t_up), default=float("-inf"))
            closes = min((ts for ts in seen if ts >= t_up), default=float("inf"))
            for ts in d["health_acked_ts"]:
                if ts not in seen:
                    (in_window if opens < ts < closes else outside).append(ts)
        figures["loss: health, outside the restart"] = len(outside)
        # Sent once the broker was back, a report nobody subscribed to yet came back with
        # "no matching subscribers" and the device sent it again: none may be missing. One
        # the stopping broker acknowledged but had not handed to the service is lost.
        figures["loss: health, after the broker was back"] = sum(1 for t in in_window if t >= t_up)
        figures["health lost as the broker stopped"] = sum(1 for t in in_window if t < t_up)
        if outside:  # when they were sent, from the broker's stop
            figures["  outside: sent from (s after stop)"] = min(outside) - t_stop
            figures["  outside: sent until (s after stop)"] = max(outside) - t_stop
        if in_window:  # when they were sent, from the broker's stop
            figures["  sent from (s after broker stop)"] = min(in_window) - t_stop
            figures["  sent until (s after broker stop)"] = max(in_window) - t_stop
        figures["loss: jobs not received"] = sum(1 for d in tally.values() if not d["jobs"])
        answered = probe.latencies()
        figures["api calls"] = len(answered)
        figures["api errors"] = len(probe.calls) - len(answered)
        figures["api p50 (s)"] = percentile(answered, 50)
        figures["api p99 (s)"] = percentile(answered, 99)
        for kind in sorted({k for _, k, _, _ in probe.calls}):
            figures[f"api p99 {kind} (s)"] = percentile(probe.latencies(kind), 99)
        # by phase: the steady state, the rollout, the connect storm after the restart
        # (until the registry has everyone), and the rest (the drain, the tally)
        phases = [("steady", steady_from), ("rollout", t_roll), ("restart", t_stop)]
        phases.append(("drain", seen_at))
        for i, (phase, begins) in enumerate(phases):
            ends = phases[i + 1][1] if i + 1 < len(phases) else float("inf")
            during = [s for t, _, s, status in probe.calls if status == 200 and begins <= t < ends]
            if during:
                figures[f"api p99 {phase} (s)"] = percentile(during, 99)
        for name in cpu.measuring():
            cpu.end(name)
        wall = time.time() - t0
        figures["wall (s)"] = wall
        for name, spent in cpu.spent.items():
            figures[f"cpu {name} (s)"] = spent
    finally:
        if probe is not None:
            probe.stop()
        if fleet is not None:
            fleet.stop(60)
        watch.stop()
        stack.stop()
        for p in profilers:  # py-spy writes its file when the process it samples has ended
            p.wait(60)
        if server is not None:
            server.stop()
    if fleet.finals:
        figures["cpu simulator (s)"] = sum(f[1] for f in fleet.finals)
        figures["connect errors"] = sum(f[2] for f in fleet.finals)
        # A connect waits for a thread of the simulator's pool: the longest wait says how
        # far the simulator itself held the storm back.
        figures["simulator: longest connect-thread wait (s)"] = max(f[3] for f in fleet.finals)
    figures["run (s)"] = time.perf_counter() - started
    return figures


def table(figures: dict[str, Any]) -> str:
    lines = []
    for name, value in figures.items():
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        target = TARGETS.get(name)
        if name == "restart: registry has all (s)":
            target = TARGETS["online after restart (s)"]
        note = ""
        if target is not None and isinstance(value, float):
            note = f"  target <= {target:g}: {'met' if value <= target else 'MISSED'}"
        if name.startswith("loss:"):
            note = "  target 0: " + ("met" if value == 0 else "MISSED")
        lines.append(f"{name:<38} {text:>12}{note}")
    return "\n".join(lines)
