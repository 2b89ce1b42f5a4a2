"""What the demo shows: one row per device and the fleet's events, read from the operator API.

`snapshot` reads the management service's API (as any operator would: devices,
their health and meta, their configuration, the jobs) into `DeviceRow`s;
`changes` compares two snapshots and says what happened, as event lines: a
device online or offline (with the reason the registry recorded), a
configuration applied, rejected or reverted, a job moving to a new state. The
demo adds what only it can see: an agent process that died, and how.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

Get = Callable[[str], tuple[int, Any]]  # (status, body) of GET path on the operator API


@dataclass(frozen=True)
class DeviceRow:
    device: str
    online: bool | None
    reason: str | None  # of the last online change
    uptime_s: float | None  # the device's own, from its health report
    slot: str | None  # None: no A/B slots (a host agent)
    version: str | None
    load: float | None
    queue_depth: int | None
    dropped: int | None
    config: str | None  # "v3 applied", "v4 rejected: ...", "v5 pending"
    job: str | None  # "j-... downloading 40%"
    job_state: tuple[str, str] | None = None  # (job id, state), for the events
    machine: str | None = None  # a machine the demo powers, while not online: "booting 40 s"


@dataclass
class Snapshot:
    rows: dict[str, DeviceRow] = field(default_factory=dict)
    ok: bool = True
    error: str = ""


def snapshot(get: Get) -> Snapshot:
    """The fleet as the operator API shows it now."""
    status, devices = get("/devices")
    if status != 200 or not isinstance(devices, list):
        return Snapshot(ok=False, error=f"GET /devices answered {status}")
    status, jobs = get("/jobs")
    current: dict[str, tuple[str, dict[str, Any]]] = {}
    for job in jobs if status == 200 and isinstance(jobs, list) else []:
        for d in job.get("devices", []):
            current[d["device"]] = (job["id"], d)  # jobs come oldest first: the last wins
    rows: dict[str, DeviceRow] = {}
    for summary in devices:
        device = summary["id"]
        _, full = get(f"/devices/{device}")
        health = (full or {}).get("health") or {}
        meta = (full or {}).get("meta") or {}
        reason = None
        if summary.get("online") is not None:
            _, hist = get(f"/devices/{device}/history?limit=1")
            if isinstance(hist, list) and hist:
                reason = hist[-1].get("reason")
        rows[device] = DeviceRow(
            device=device,
            online=summary.get("online"),
            reason=reason,
            uptime_s=health.get("uptime_s"),
            slot=health.get("slot") or meta.get("slot"),
            version=health.get("os_version") or (meta.get("os") or {}).get("version"),
            load=(health.get("load") or [None])[0],
            queue_depth=(health.get("queue") or {}).get("depth"),
            dropped=(health.get("queue") or {}).get("dropped"),
            config=_config_text(get, device),
            job=_job_text(current.get(device)),
            job_state=_job_state(current.get(device)),
        )
    return Snapshot(rows)


def _config_text(get: Get, device: str) -> str | None:
    status, cfg = get(f"/devices/{device}/config")
    if status != 200 or not isinstance(cfg, dict) or not cfg.get("version"):
        return None
    reported = cfg.get("reported") or {}
    if reported.get("version") != cfg["version"]:
        return f"v{cfg['version']} pending"
    text = f"v{cfg['version']} {reported.get('status')}"
    return text + (f": {reported['error']}" if reported.get("error") else "")


def _job_text(entry: tuple[str, dict[str, Any]] | None) -> str | None:
    if entry is None:
        return None
    job, d = entry
    pct = "" if d.get("percent") is None else f" {d['percent']}%"
    return f"{job} {d['state']}{pct}"


def _job_state(entry: tuple[str, dict[str, Any]] | None) -> tuple[str, str] | None:
    return None if entry is None else (entry[0], entry[1]["state"])


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """What happened between two snapshots, one line each."""
    if not after.ok:
        return [] if not before.ok else [f"management API: {after.error}"]
    events: list[str] = []
    if not before.ok:
        events.append("management API answers again")
    for device, row in after.rows.items():
        old = before.rows.get(device)
        if old is None:
            events.append(f"{device} registered")
        if (old is None or old.online != row.online) and row.online is not None:
            why = f" ({row.reason})" if row.reason else ""
            events.append(f"{device} {'online' if row.online else 'OFFLINE'}{why}")
        if row.config and (old is None or old.config != row.config) and "pending" not in row.config:
            events.append(f"{device} configuration {row.config}")
        if row.job_state and (old is None or old.job_state != row.job_state):
            job, state = row.job_state
            events.append(f"{device} update {job}: {state}")
    return events


def machine_row(row: DeviceRow | None, device: str, powered_for: float | None) -> DeviceRow:
    """The row of a device the demo boots (QEMU): the operator API's while it is online;
    "booting" with the seconds since power-on until it is (the device may not be in the
    registry yet: a first boot is a row too), "powered off" between a reboot and power-on."""
    if row is None:
        row = DeviceRow(device, None, None, None, None, None, None, None, None, None, None)
    if powered_for is None:
        return replace(row, machine="powered off")
    if row.online:
        return replace(row, machine=None)
    # its last slot and version stay in view; its last uptime and load belong to the last boot
    return replace(row, machine=f"booting {age_text(powered_for)}", uptime_s=None, load=None)


def exit_text(returncode: int) -> str:
    """How a process ended, from its return code."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


def age_text(seconds: float | None) -> str:
    """A duration as the table shows it: 42 s, 3 min, 2 h 05, 3 d 04 h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d}"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def clock() -> str:
    return time.strftime("%H:%M:%S")
