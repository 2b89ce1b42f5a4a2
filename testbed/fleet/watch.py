"""What the services make of the simulated fleet, watched from outside them.

- ``RegistryWatch`` reads the management service's registry (reads only: on SQLite
  in WAL a reader never blocks the service's writer) every ``interval`` seconds.
  A device's health record carries the device's own send time (``health_ts``),
  and simulator and services share this machine's clock, so the latency from
  send to record is the time a new ``health_ts`` is first seen minus itself,
  late by at most one polling interval (the resolution printed with it).
- ``solution_counts`` counts what the solution service accepted and what its
  archive receiver still owes; ``archive_seqs`` reads the archive files back.
- ``ApiProbe`` calls the operator API as the stack's admin the whole time and
  records each call's latency (a new TLS connection per call, as the CLI does).
- ``cpu_seconds`` reads a process's CPU time from /proc, to tell which process
  the machine's two cores went to.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import sqlalchemy as sa
from twelvefactor_services import database
from twelvefactor_services.management import store
from twelvefactor_services.management.api_client import ApiError, ManagementClient
from twelvefactor_services.management.store import Db


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``; ValueError if there are none."""
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def _readonly(db: str) -> Db:
    """The registry as it is (no schema made): a SQLite file's path or a PostgreSQL URL."""
    return Db(db, migrate=False)


@dataclass
class RegistryWatch:
    """Polls the registry: health latencies and when each device's metadata was last seen."""

    db: str
    interval: float = 0.05
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (seen, latency)
    meta_ts: dict[str, float] = field(default_factory=dict)
    online: dict[str, bool] = field(default_factory=dict)
    polls: list[float] = field(default_factory=list)  # how long each poll took

    def __post_init__(self) -> None:
        self._health: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-watch", daemon=True)
        self.lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        conn = None
        while conn is None and not self._stop.is_set():
            try:
                conn = _readonly(self.db)
            except FileNotFoundError:  # the service has not made it yet
                time.sleep(self.interval)
        if conn is None:
            return
        try:
            while not self._stop.is_set():
                started = time.time()
                try:
                    rows = conn.execute(
                        "SELECT id, health_ts, meta_ts, online FROM devices"
                    ).fetchall()
                except store.Error:  # the schema is being made
                    rows = []
                seen = time.time()
                with self.lock:
                    for device, health_ts, meta_ts, online in rows:
                        if health_ts is not None and health_ts != self._health.get(device):
                            if device in self._health:  # the first one may predate the watch
                                self.latencies.append((seen, seen - health_ts))
                            self._health[device] = health_ts
                        if meta_ts is not None:
                            self.meta_ts[device] = meta_ts
                        self.online[device] = bool(online)
                    self.polls.append(seen - started)
                self._stop.wait(max(0.0, self.interval - (time.time() - started)))
        finally:
            conn.close()

    def devices_seen_since(self, since: float) -> int:
        """Devices whose metadata (sent on every connect) is stamped at or after ``since``."""
        with self.lock:
            return sum(1 for ts in self.meta_ts.values() if ts >= since)

    def online_count(self) -> int:
        with self.lock:
            return sum(self.online.values())

    def latencies_between(self, start: float, end: float) -> list[float]:
        with self.lock:
            return [lat for seen, lat in self.latencies if start <= seen <= end]


def health_samples(db: str, since: float) -> dict[str, set[float]]:
    """The device times of the health samples the registry recorded at or after ``since``."""
    conn = _readonly(db)
    try:
        rows = conn.execute("SELECT device, ts FROM health_samples WHERE ts >= ?", (since,))
        found: dict[str, set[float]] = {}
        for device, ts in rows:
            found.setdefault(device, set()).add(ts)
    finally:
        conn.close()
    return found


def solution_counts(target: str) -> tuple[int, int]:
    """(messages the solution service accepted, of those still owed to the archive), from
    its SQLite file or its PostgreSQL database (reads only)."""
    if "://" not in target and not Path(target).exists():
        return 0, 0
    db = database.engine(target)
    try:
        with database.reading(db) as conn:
            accepted = conn.execute(sa.text("SELECT count(*) FROM messages")).scalar()
            owed = conn.execute(
                sa.text("SELECT count(*) FROM outbox WHERE receiver = 'archive'")
            ).scalar()
    except sa.exc.DBAPIError:  # no tables yet: the service has not started
        return 0, 0
    finally:
        db.dispose()
    return int(accepted or 0), int(owed or 0)


def archive_seqs(archive_dir: Path, device: str) -> dict[str, set[int]]:
    """queue_id -> the seqs in the device's archive file."""
    found: dict[str, set[int]] = {}
    path = archive_dir / f"{device}.jsonl"
    if not path.exists():
        return found
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                record = json.loads(line)
                found.setdefault(str(record["queue_id"]), set()).add(int(record["seq"]))
    return found


Call = tuple[float, str, float, int]  # (time, endpoint, seconds, status)
# What a console or a script asks most: one device, the rollouts, the overview's counts,
# the devices page's first 100, and a default page of 500 (a script listing the fleet)
# from a device on.
PROBED = [
    "GET /devices/{id}",
    "GET /rollouts",
    "GET /fleet",
    "GET /devices/{id}",
    "GET /devices?limit=100",
    "GET /devices?after={id}",
]


@dataclass
class ApiProbe:
    """Calls the operator API in a loop from a process of its own (as an operator's CLI or
    browser is: the bench's own threads must not be in the latency measured); the calls
    are read at `stop`."""

    url: str
    token: str
    ca: Path
    devices: Sequence[str]
    pause: float = 0.2
    calls: list[Call] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        context = multiprocessing.get_context("spawn")  # the bench has threads: no fork
        self._go, self._stop = context.Event(), context.Event()
        self._results, sent = context.Pipe(duplex=False)
        args = (self.url, self.token, self.ca, list(self.devices), self.pause)
        self._process = context.Process(
            target=_probe, args=(*args, self._go, self._stop, sent), name="api-probe", daemon=True
        )

    def prepare(self) -> None:
        """The probe's process started, waiting (its interpreter's start-up, a second of
        CPU, must not fall into what is measured)."""
        self._process.start()

    def start(self) -> None:
        self._go.set()

    def stop(self) -> None:
        if self._process.pid is None or self._stop.is_set():
            return
        self._stop.set()
        if self._results.poll(120):
            self.calls, self.errors = self._results.recv()
        self._process.join(30)

    def latencies(self, kind: str | None = None) -> list[float]:
        return [s for _, k, s, status in self.calls if status == 200 and kind in (None, k)]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a live process (and its reaped children), from /proc."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[11:15]) / ticks


def _probe(
    url: str,
    token: str,
    ca: Path,
    devices: list[str],
    pause: float,
    go: EventType,
    stop: EventType,
    sent: Connection,
) -> None:
    """The probe's process: from `go`, PROBED in turn until `stop`; then every call sent
    back."""
    client = ManagementClient(url, token=token, ca=ca)
    rng = random.Random(7)
    calls: list[Call] = []
    errors: list[str] = []
    i = 0
    while not go.wait(0.5):
        if stop.is_set():
            break
    while not stop.is_set():
        kind = PROBED[i % len(PROBED)]
        i += 1
        path = kind.split(" ", 1)[1].replace("{id}", rng.choice(devices))
        started = time.perf_counter()
        try:
            status, _ = client.request("GET", path)
        except ApiError as exc:
            errors.append(str(exc))
            status = 0
        calls.append((time.time(), kind, time.perf_counter() - started, status))
        stop.wait(pause)
    sent.send((calls, errors))
