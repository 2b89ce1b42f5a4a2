"""Update jobs in the registry's SQLite file: who gets which artifact, and how far each got.

`update_jobs` is one row per job (artifact, target); `device_jobs` one row
per device the job addresses, holding its state (management/jobs.py decides
the transitions) and the last published flag. A group job is expanded to the
group's members when it is created. A device has at most one unfinished job:
its retained `mgmt/<id>/down/update` holds one job, and a second one would
silently replace the first.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twelvefactor_agent.protocol import envelope
from twelvefactor_agent.protocol.states import FINAL

from twelvefactor_services.management import registry
from twelvefactor_services.management.artifacts import Artifact, ArtifactStore
from twelvefactor_services.management.jobs import (
    JobReport,
    JobState,
    TransitionError,
    advance,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS update_jobs (
    id TEXT PRIMARY KEY,
    artifact TEXT NOT NULL,             -- sha256 of the .swu
    target TEXT NOT NULL,               -- "device:<id>" or "group:<name>"
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS device_jobs (
    job TEXT NOT NULL REFERENCES update_jobs(id),
    device TEXT NOT NULL,
    state TEXT NOT NULL,
    percent INTEGER,
    reason TEXT,
    updated REAL NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job, device)
);
CREATE INDEX IF NOT EXISTS device_jobs_device ON device_jobs(device, state);
"""
FINAL_SQL = "(" + ",".join(f"'{s}'" for s in sorted(FINAL)) + ")"


class JobError(ValueError):
    """A job that cannot be created (unknown artifact or group, device busy)."""


@dataclass(frozen=True)
class Outcome:
    """What a report did: the state before and after, or why it was ignored."""

    device: str
    job: str
    before: str | None
    after: str | None
    ignored: str | None = None


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    db = registry.connect(path, readonly=readonly)
    if not readonly:
        db.executescript(SCHEMA)
    return db


def new_job_id() -> str:
    return "j-" + secrets.token_hex(6)


def create_job(
    db: sqlite3.Connection,
    store: ArtifactStore,
    sha256: str,
    *,
    device: str | None = None,
    group: str | None = None,
    now: float,
) -> dict[str, Any]:
    if (device is None) == (group is None):
        raise JobError("a job targets exactly one of a device or a group")
    if store.get(sha256) is None:
        raise JobError(f"unknown artifact {sha256!r}")
    db.execute("BEGIN IMMEDIATE")
    try:
        if device is not None:
            devices, target = [device], f"device:{device}"
        else:
            rows = db.execute("SELECT device FROM config_members WHERE grp = ?", (group,))
            devices, target = sorted(r[0] for r in rows), f"group:{group}"
            if not devices:
                raise JobError(f"group {group!r} has no members")
        busy = busy_devices(db, devices)
        if busy:
            raise JobError(f"unfinished job for {', '.join(sorted(busy))}; wait for it to end")
        job = insert_job(db, sha256, devices, target, now)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    found = get_job(db, job)
    assert found is not None
    return found


def busy_devices(db: sqlite3.Connection, devices: list[str]) -> dict[str, str]:
    """device -> its unfinished job, for those of ``devices`` that have one."""
    found: dict[str, str] = {}
    for i in range(0, len(devices), 500):  # SQLite's limit on parameters
        chunk = devices[i : i + 500]
        rows = db.execute(
            f"SELECT device, job FROM device_jobs WHERE state NOT IN {FINAL_SQL}"
            f" AND device IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        found.update({r[0]: r[1] for r in rows})
    return found


def insert_job(
    db: sqlite3.Connection, sha256: str, devices: list[str], target: str, now: float
) -> str:
    """A new job for ``devices`` (inside the caller's write transaction); its id."""
    job = new_job_id()
    db.execute(
        "INSERT INTO update_jobs (id, artifact, target, created) VALUES (?, ?, ?, ?)",
        (job, sha256, target, now),
    )
    db.executemany(
        "INSERT INTO device_jobs (job, device, state, updated) VALUES (?, ?, 'queued', ?)",
        [(job, d, now) for d in devices],
    )
    return job


def get_job(db: sqlite3.Connection, job: str) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM update_jobs WHERE id = ?", (job,)).fetchone()
    if row is None:
        return None
    devices = db.execute(
        "SELECT device, state, percent, reason, updated FROM device_jobs WHERE job = ?"
        " ORDER BY device",
        (job,),
    ).fetchall()
    return {**dict(row), "devices": [dict(d) for d in devices]}


def list_jobs(db: sqlite3.Connection) -> list[dict[str, Any]]:
    ids = [r[0] for r in db.execute("SELECT id FROM update_jobs ORDER BY created, id")]
    return [j for j in (get_job(db, i) for i in ids) if j is not None]


def may_fetch(db: sqlite3.Connection, device: str, sha256: str) -> bool:
    """The artifact server's rule: an unfinished job addressed to `device` names it."""
    row = db.execute(
        "SELECT 1 FROM device_jobs d JOIN update_jobs u ON u.id = d.job"
        f" WHERE d.device = ? AND u.artifact = ? AND d.state NOT IN {FINAL_SQL}",
        (device, sha256),
    ).fetchone()
    return row is not None


def unpublished(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(device, job, artifact) whose job has not been published yet."""
    return [
        (r[0], r[1], r[2])
        for r in db.execute(
            "SELECT d.device, d.job, u.artifact FROM device_jobs d JOIN update_jobs u"
            " ON u.id = d.job WHERE d.published = 0 ORDER BY u.created"
        )
    ]


def mark_published(db: sqlite3.Connection, device: str, job: str) -> None:
    db.execute("UPDATE device_jobs SET published = 1 WHERE job = ? AND device = ?", (job, device))


def job_document(job: str, device: str, artifact: Artifact, base_url: str) -> bytes:
    """The retained payload of `mgmt/<device>/down/update` (docs/protocol.md)."""
    return envelope.dumps(
        {
            "v": envelope.V,
            "job": job,
            "device": device,
            "version": artifact.version,
            "hardware": artifact.hardware,
            "sha256": artifact.sha256,
            "size": artifact.size,
            "url": f"{base_url.rstrip('/')}/artifacts/{artifact.sha256}.swu",
        }
    )


def apply_report(db: sqlite3.Connection, device: str, report: JobReport) -> Outcome:
    """Move the device's job by a report; an unknown job or an illegal move changes nothing."""
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute(
            "SELECT state, percent, reason, updated FROM device_jobs WHERE job = ? AND device = ?",
            (report.job, device),
        ).fetchone()
        if row is None:
            db.execute("ROLLBACK")
            return Outcome(device, report.job, None, None, "no such job for this device")
        current = JobState(row["state"], row["percent"], row["reason"], row["updated"])
        try:
            nxt = advance(current, report)
        except TransitionError as exc:
            db.execute("ROLLBACK")
            return Outcome(device, report.job, current.state, None, str(exc))
        db.execute(
            "UPDATE device_jobs SET state = ?, percent = ?, reason = ?, updated = ?"
            " WHERE job = ? AND device = ?",
            (nxt.state, nxt.percent, nxt.reason, nxt.updated, report.job, device),
        )
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return Outcome(device, report.job, current.state, nxt.state)
