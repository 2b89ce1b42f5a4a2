"""Update jobs in the management database (store.py): who gets which artifact, and how far each got.

`update_jobs` is one row per job (artifact, target); `device_jobs` one row
per device the job addresses, holding its state (management/jobs.py decides
the transitions) and the last published flag. A group job is expanded to the
group's members when it is created. A device has at most one unfinished job:
its retained `mgmt/<id>/down/update` holds one job, and a second one would
silently replace the first.

A download-only job is created with each device's `install` at "hold": the
device downloads, checks and reports `downloaded`, then waits. `release`
(the operator's go, or `release_due` once the job's `install_at` has come)
sets it to "now" and `cancel_held` to "cancel"; either marks the row
unpublished, so the publisher sends the same job again with the new mode.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from twelvefactor_agent.protocol import envelope
from twelvefactor_agent.protocol.states import (
    DOWNLOADED,
    FINAL,
    INSTALL_CANCEL,
    INSTALL_HOLD,
    INSTALL_NOW,
)

from twelvefactor_services.management import registry
from twelvefactor_services.management.artifacts import Artifact, ArtifactStore
from twelvefactor_services.management.jobs import (
    JobReport,
    JobState,
    TransitionError,
    advance,
)
from twelvefactor_services.management.store import Db

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


def new_job_id() -> str:
    return "j-" + secrets.token_hex(6)


def create_job(
    db: Db,
    store: ArtifactStore,
    sha256: str,
    *,
    device: str | None = None,
    group: str | None = None,
    now: float,
    download_only: bool = False,
    install_at: float | None = None,
) -> dict[str, Any]:
    if (device is None) == (group is None):
        raise JobError("a job targets exactly one of a device or a group")
    if install_at is not None and not download_only:
        raise JobError("install_at is for a download-only job")
    with db.write():
        # Under the write lock: an artifact deleted meanwhile (its delete holds the same
        # lock) is gone here, not named by a job whose devices could not fetch it.
        if store.get(sha256) is None:
            raise JobError(f"unknown artifact {sha256!r}")
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
        job = insert_job(
            db, sha256, devices, target, now, hold=download_only, install_at=install_at
        )
    found = get_job(db, job)
    assert found is not None
    return found


def busy_devices(db: Db, devices: list[str]) -> dict[str, str]:
    """device -> its unfinished job, for those of ``devices`` that have one."""
    found: dict[str, str] = {}
    for i in range(0, len(devices), 500):  # (SQLite's limit on parameters)
        chunk = devices[i : i + 500]
        rows = db.execute(
            f"SELECT device, job FROM device_jobs WHERE state NOT IN {FINAL_SQL}"
            f" AND device IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        found.update({r[0]: r[1] for r in rows})
    return found


def insert_job(
    db: Db,
    sha256: str,
    devices: list[str],
    target: str,
    now: float,
    *,
    hold: bool = False,
    install_at: float | None = None,
) -> str:
    """A new job for ``devices`` (inside the caller's write transaction); its id.

    ``hold``: download only, each device waits for `release` before installing."""
    job = new_job_id()
    db.execute(
        "INSERT INTO update_jobs (id, artifact, target, created, install_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (job, sha256, target, now, install_at),
    )
    mode = INSTALL_HOLD if hold else INSTALL_NOW
    db.executemany(
        "INSERT INTO device_jobs (job, device, state, updated, install)"
        " VALUES (?, ?, 'queued', ?, ?)",
        [(job, d, now, mode) for d in devices],
    )
    return job


def set_install(db: Db, job: str, mode: str, devices: list[str] | None = None) -> list[str]:
    """Held, unfinished devices of ``job`` (all, or those of ``devices``) set to ``mode``,
    to be published again; the devices changed (inside the caller's transaction)."""
    rows = db.execute(
        f"SELECT device FROM device_jobs WHERE job = ? AND install = '{INSTALL_HOLD}'"
        f" AND state NOT IN {FINAL_SQL} ORDER BY device",
        (job,),
    )
    held = [r[0] for r in rows if devices is None or r[0] in devices]
    db.executemany(
        "UPDATE device_jobs SET install = ?, published = 0 WHERE job = ? AND device = ?",
        [(mode, job, d) for d in held],
    )
    return held


def _change_holds(db: Db, job: str, mode: str, devices: list[str] | None) -> list[str]:
    with db.write():
        if db.execute("SELECT 1 FROM update_jobs WHERE id = ?", (job,)).fetchone() is None:
            raise KeyError(job)
        changed = set_install(db, job, mode, devices)
        if not changed:
            raise JobError(f"job {job} has no device waiting for its install")
    return changed


def release(db: Db, job: str, devices: list[str] | None = None) -> list[str]:
    """The operator's go: the held devices of ``job`` install; the devices released."""
    return _change_holds(db, job, INSTALL_NOW, devices)


def cancel_held(db: Db, job: str, devices: list[str] | None = None) -> list[str]:
    """The held devices of ``job`` drop the file and end the job `failed` (`cancelled`)."""
    return _change_holds(db, job, INSTALL_CANCEL, devices)


def release_due(db: Db, now: float) -> list[tuple[str, int]]:
    """Release the download-only jobs whose `install_at` has come: (job, devices released)."""
    done: list[tuple[str, int]] = []
    due = db.execute(
        "SELECT DISTINCT u.id FROM update_jobs u JOIN device_jobs d ON d.job = u.id"
        f" WHERE u.install_at <= ? AND d.install = '{INSTALL_HOLD}'"
        f" AND d.state NOT IN {FINAL_SQL} ORDER BY u.id",
        (now,),
    ).fetchall()
    for (job,) in due:
        with db.write():  # (another copy may have released it meanwhile)
            changed = set_install(db, job, INSTALL_NOW, None)
        if changed:
            done.append((job, len(changed)))
    return done


def get_job(db: Db, job: str) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM update_jobs WHERE id = ?", (job,)).fetchone()
    if row is None:
        return None
    devices = db.execute(
        "SELECT device, state, percent, reason, updated, install, sent_bytes, path, fallback"
        " FROM device_jobs"
        " WHERE job = ? ORDER BY device",
        (job,),
    ).fetchall()
    return {**dict(row), "devices": [dict(d) for d in devices]}


def list_jobs(db: Db) -> list[dict[str, Any]]:
    ids = [r[0] for r in db.execute("SELECT id FROM update_jobs ORDER BY created, id")]
    return [j for j in (get_job(db, i) for i in ids) if j is not None]


def may_fetch(db: Db, device: str, sha256: str) -> bool:
    """The artifact server's rule: an unfinished job addressed to `device` names it."""
    row = db.execute(
        "SELECT 1 FROM device_jobs d JOIN update_jobs u ON u.id = d.job"
        f" WHERE d.device = ? AND u.artifact = ? AND d.state NOT IN {FINAL_SQL}",
        (device, sha256),
    ).fetchone()
    return row is not None


def add_sent(db: Db, device: str, sha256: str, sent: int) -> None:
    """Count `sent` bytes of artifact `sha256` the artifact server sent `device` (what
    crossed its link, resumed and repeated requests included) on its unfinished job."""
    with db.write():
        db.execute(
            "UPDATE device_jobs SET sent_bytes = sent_bytes + ? WHERE device = ?"
            f" AND state NOT IN {FINAL_SQL}"
            " AND job IN (SELECT id FROM update_jobs WHERE artifact = ?)",
            (sent, device, sha256),
        )


def unpublished(db: Db, shard: str | None = None) -> list[tuple[str, str, str, str, bool]]:
    """(device, job, artifact, install, ended) whose job has not been published (again) yet,
    of the devices `shard`'s copies publish for (registry.shard_filter); an ended job's
    retained document is to be cleared (in creation order: before a newer job of the same
    device goes out)."""
    where, args = registry.shard_filter(shard)
    return [
        (r[0], r[1], r[2], r[3], r[4] in FINAL)
        for r in db.execute(
            "SELECT j.device, j.job, u.artifact, j.install, j.state FROM device_jobs j"
            " JOIN update_jobs u ON u.id = j.job LEFT JOIN devices d ON d.id = j.device"
            f" LEFT JOIN enrolments e ON e.device = j.device WHERE j.published = 0{where}"
            " ORDER BY u.created",
            args,
        )
    ]


def mark_published(db: Db, device: str, job: str, install: str, now: float) -> None:
    """``install`` is the mode that went out: a release made meanwhile stays unpublished."""
    db.execute(
        "UPDATE device_jobs SET published = 1, published_at = ?"
        " WHERE job = ? AND device = ? AND install = ?",
        (now, job, device, install),
    )


def offer_quiet_again(db: Db, now: float, quiet: float) -> list[tuple[str, str]]:
    """(device, job) of the unfinished jobs of online devices that have reported nothing
    for `quiet` seconds since their last report and their last offer: marked to be
    published again. A device answers a job it has finished with its final report again
    (docs/protocol.md, "Updates"): so a final report lost on the way (a service copy
    killed with it in flight, a broker restart) still arrives. A device that is offline
    gets the retained job when it connects; a held download (`downloaded`, waiting for the
    go) is quiet by design and is not offered again."""
    cutoff = now - quiet
    with db.write():
        rows = db.execute(
            f"SELECT d.device, d.job FROM device_jobs d JOIN devices v ON v.id = d.device"
            f" WHERE d.state NOT IN {FINAL_SQL} AND d.published = 1 AND v.online = 1"
            f" AND NOT (d.state = '{DOWNLOADED}' AND d.install = '{INSTALL_HOLD}')"
            " AND d.updated < ? AND COALESCE(d.published_at, 0) < ?",
            (cutoff, cutoff),
        ).fetchall()
        db.executemany(
            "UPDATE device_jobs SET published = 0 WHERE device = ? AND job = ? AND published = 1",
            [(r[0], r[1]) for r in rows],
        )
    return [(r[0], r[1]) for r in rows]


def job_document(
    job: str, device: str, artifact: Artifact, base_url: str, install: str = INSTALL_NOW
) -> bytes:
    """The retained payload of `mgmt/<device>/down/update` (docs/protocol.md); with
    `delta` when the artifact has one (the device tries it first)."""
    base = base_url.rstrip("/")
    doc: dict[str, Any] = {
        "install": install,
        "v": envelope.V,
        "job": job,
        "device": device,
        "version": artifact.version,
        "hardware": artifact.hardware,
        "sha256": artifact.sha256,
        "size": artifact.size,
        "url": f"{base}/artifacts/{artifact.sha256}.swu",
    }
    if artifact.delta is not None:
        sha = artifact.delta["sha256"]
        doc["delta"] = {
            "sha256": sha,
            "size": artifact.delta["size"],
            "url": f"{base}/artifacts/{sha}.swu",
        }
    return envelope.dumps(doc)


def apply_report(db: Db, device: str, report: JobReport) -> Outcome:
    """Move the device's job by a report; an unknown job or an illegal move changes nothing."""
    with db.write():
        row = db.execute(
            "SELECT state, percent, reason, updated FROM device_jobs WHERE job = ? AND device = ?",
            (report.job, device),
        ).fetchone()
        if row is None:
            return Outcome(device, report.job, None, None, "no such job for this device")
        current = JobState(row["state"], row["percent"], row["reason"], row["updated"])
        try:
            nxt = advance(current, report)
        except TransitionError as exc:
            return Outcome(device, report.job, current.state, None, str(exc))
        # The job's end: its retained document is cleared (published = 0, see unpublished),
        # so that the device is not offered it again at every connect.
        ended = nxt.state in FINAL and current.state not in FINAL
        db.execute(
            "UPDATE device_jobs SET state = ?, percent = ?, reason = ?, updated = ?,"
            " path = COALESCE(?, path), fallback = COALESCE(?, fallback),"
            " published = CASE WHEN ? THEN 0 ELSE published END"
            " WHERE job = ? AND device = ?",
            (
                nxt.state,
                nxt.percent,
                nxt.reason,
                nxt.updated,
                report.path,
                report.fallback,
                ended,
                report.job,
                device,
            ),
        )
    return Outcome(device, report.job, current.state, nxt.state)
