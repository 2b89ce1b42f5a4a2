"""Rollouts in the management database (store.py), moved on by `tick` (rules: rollouts.py).

`rollouts` holds one row per rollout (its request, state, current phase and
why it is in that state), `rollout_devices` each device's phase and, once its
phase started, its update job (or why it was skipped: a device busy with
another job is left out rather than given a second one), `rollout_events`
every change of state with its reason. A phase starts as one update job for
its devices (target `rollout:<id>:<phase>`), so the publisher, the agents and
the artifact server treat it as any job. A download-only rollout makes every
phase's job, held, when it starts; `go` records when its installs began, and
a phase then starts by releasing its job's holds (jobstore.py). Every service copy runs `tick`;
each step is one write transaction, so copies never start a phase twice.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from twelvefactor_agent.protocol.states import (
    FAILED,
    FINAL,
    INSTALL_CANCEL,
    INSTALL_NOW,
    ROLLED_BACK,
    SUCCEEDED,
)

from twelvefactor_services.management import jobstore
from twelvefactor_services.management.artifacts import ArtifactStore
from twelvefactor_services.management.rollouts import (
    ABORTED,
    CANCELLED,
    ENDED,
    FINISHED,
    PAUSED,
    RUNNING,
    SCHEDULED,
    WAIT,
    Phase,
    Progress,
    RolloutError,
    Spec,
    decide,
    phase_sizes,
)
from twelvefactor_services.management.store import Db


def _spec_json(spec: Spec) -> str:
    return json.dumps(
        {
            "artifact": spec.artifact,
            "group": spec.group,
            "devices": None if spec.devices is None else list(spec.devices),
            "tags": None if spec.tags is None else list(spec.tags),
            "phases": [p.to_json() for p in spec.phases],
            "success_percent": spec.success_percent,
            "success_min": spec.success_min,
            "error_percent": spec.error_percent,
            "error_min": spec.error_min,
            "on_error": spec.on_error,
            "start_at": spec.start_at,
            "download_only": spec.download_only,
            "install_at": spec.install_at,
        }
    )


def _spec(text: str) -> Spec:
    doc = json.loads(text)
    doc["phases"] = tuple(Phase(**p) for p in doc["phases"])
    doc["devices"] = None if doc["devices"] is None else tuple(doc["devices"])
    doc["tags"] = None if doc.get("tags") is None else tuple(doc["tags"])
    return Spec(**doc)


def _event(db: Db, rollout: str, now: float, state: str, reason: str) -> None:
    db.execute(
        "UPDATE rollouts SET state = ?, reason = ?, updated = ? WHERE id = ?",
        (state, reason, now, rollout),
    )
    db.execute(
        "INSERT INTO rollout_events (rollout, ts, state, reason) VALUES (?, ?, ?, ?)",
        (rollout, now, state, reason),
    )


def create(db: Db, store: ArtifactStore, spec: Spec, now: float, who: str | None) -> dict[str, Any]:
    rollout = "r-" + secrets.token_hex(6)
    with db.write():
        if store.get(spec.artifact) is None:  # under the lock an artifact delete also holds
            raise RolloutError([f"unknown artifact {spec.artifact!r}"])
        retired = {
            r[0] for r in db.execute("SELECT device FROM enrolments WHERE retired IS NOT NULL")
        }
        if spec.group is not None:
            rows = db.execute("SELECT device FROM config_members WHERE grp = ?", (spec.group,))
            devices = sorted(r[0] for r in rows if r[0] not in retired)
            if not devices:
                raise RolloutError([f"group {spec.group!r} has no members"])
        elif spec.tags is not None:
            wanted = set(spec.tags)
            rows = db.execute("SELECT device, tags FROM enrolments WHERE retired IS NULL")
            devices = sorted(r[0] for r in rows if wanted <= set(json.loads(r[1])))
            if not devices:
                raise RolloutError([f"no enrolled device has the tags {', '.join(spec.tags)}"])
        else:
            devices = sorted(spec.devices or ())  # phases follow the sorted order, as for groups
            gone = sorted(set(devices) & retired)
            if gone:
                raise RolloutError([f"decommissioned: {', '.join(gone)}"])
        sizes = phase_sizes(len(devices), spec.phases)
        db.execute(
            "INSERT INTO rollouts (id, spec, state, phases, created, created_by, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rollout, _spec_json(spec), SCHEDULED, len(sizes), now, who, now),
        )
        rows_in: list[tuple[str, str, int]] = []
        start = 0
        for phase, size in enumerate(sizes):
            rows_in += [(rollout, d, phase) for d in devices[start : start + size]]
            start += size
        db.executemany(
            "INSERT INTO rollout_devices (rollout, device, phase) VALUES (?, ?, ?)", rows_in
        )
        when = "now" if spec.start_at is None else f"at {spec.start_at:.0f}"
        if spec.download_only:
            go = "on the go" if spec.install_at is None else f"from {spec.install_at:.0f}"
            when += f", download only (install {go})"
        _event(
            db, rollout, now, SCHEDULED, f"{len(devices)} devices in {len(sizes)} phases, {when}"
        )
    found = get(db, rollout)
    assert found is not None
    return found


def ids(db: Db) -> list[str]:
    return [r[0] for r in db.execute("SELECT id FROM rollouts ORDER BY created, id")]


def get(db: Db, rollout: str) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM rollouts WHERE id = ?", (rollout,)).fetchone()
    if row is None:
        return None
    devices = db.execute(
        "SELECT r.device, r.phase, r.job, r.skipped, d.state, d.percent, d.reason, d.updated"
        " FROM rollout_devices r LEFT JOIN device_jobs d ON d.job = r.job AND d.device = r.device"
        " WHERE r.rollout = ? ORDER BY r.phase, r.device",
        (rollout,),
    ).fetchall()
    phases: list[dict[str, Any]] = [
        {"phase": i + 1, "size": 0, "started": i <= row["phase"]} for i in range(row["phases"])
    ]
    for d in devices:
        p = phases[d["phase"]]
        p["size"] += 1
        key = "skipped" if d["skipped"] else (d["state"] or "waiting")
        p[key] = p.get(key, 0) + 1
    events = db.execute(
        "SELECT ts, state, reason FROM rollout_events WHERE rollout = ? ORDER BY id", (rollout,)
    ).fetchall()
    return {
        "id": row["id"],
        **json.loads(row["spec"]),
        "state": row["state"],
        "reason": row["reason"],
        "phase": row["phase"] + 1,
        "created": row["created"],
        "created_by": row["created_by"],
        "updated": row["updated"],
        "go": row["go"],
        "phase_progress": phases,
        "devices": [
            {
                "device": d["device"],
                "phase": d["phase"] + 1,
                "job": d["job"],
                "state": "skipped" if d["skipped"] else (d["state"] or "waiting"),
                "percent": None if d["skipped"] else d["percent"],
                "reason": d["skipped"] or d["reason"],
                "updated": d["updated"],
            }
            for d in devices
        ],
        "events": [dict(e) for e in events],
    }


def list_all(db: Db) -> list[dict[str, Any]]:
    out = []
    for rollout in ids(db):
        found = get(db, rollout)
        if found is not None:
            found.pop("devices")
            out.append(found)
    return out


def control(db: Db, rollout: str, action: str, now: float, who: str) -> dict[str, Any]:
    """pause, resume or cancel; RolloutError if the rollout's state does not allow it."""
    with db.write():
        row = db.execute(
            "SELECT state, phase, go, spec FROM rollouts WHERE id = ?", (rollout,)
        ).fetchone()
        if row is None:
            raise KeyError(rollout)
        state = row["state"]
        if state in ENDED:
            raise RolloutError([f"rollout {rollout} has ended ({state})"])
        if action == "pause":
            if state == PAUSED:
                raise RolloutError([f"rollout {rollout} is paused already"])
            _event(db, rollout, now, PAUSED, f"paused by {who}")
        elif action == "resume":
            if state != PAUSED:
                raise RolloutError([f"rollout {rollout} is {state}, not paused"])
            # the failures so far are accepted: the error threshold counts from here
            p = _progress(db, rollout, max(row["phase"], 0))
            db.execute(
                "UPDATE rollouts SET accepted_failed = ?, accepted_executed = ? WHERE id = ?",
                (p.failed, p.failed + p.succeeded, rollout),
            )
            _event(
                db, rollout, now, RUNNING if row["phase"] >= 0 else SCHEDULED, f"resumed by {who}"
            )
        elif action == "cancel":
            held = _cancel_holds(db, rollout)
            note = f"; {held} held download(s) cancelled" if held else ""
            _event(
                db,
                rollout,
                now,
                CANCELLED,
                f"cancelled by {who}; jobs already sent run to their end{note}",
            )
        elif action == "install":
            if not _spec(row["spec"]).download_only:
                raise RolloutError(
                    [f"rollout {rollout} is not download-only: it installs as it goes"]
                )
            if state != RUNNING or row["go"] is not None:
                why = "installing already" if row["go"] is not None else state
                raise RolloutError([f"rollout {rollout} cannot be given the go: {why}"])
            _go(db, rollout, row["phase"], now, f"install started by {who}")
        else:
            raise RolloutError([f"unknown action {action!r}: pause, resume, cancel or install"])
    found = get(db, rollout)
    assert found is not None
    return found


def _progress(db: Db, rollout: str, phase: int) -> Progress:
    row = db.execute(
        "SELECT phases, accepted_failed, accepted_executed FROM rollouts WHERE id = ?", (rollout,)
    ).fetchone()
    rows = db.execute(
        "SELECT r.phase, r.skipped, d.state FROM rollout_devices r"
        " LEFT JOIN device_jobs d ON d.job = r.job AND d.device = r.device"
        " WHERE r.rollout = ? AND r.phase <= ?",
        (rollout, phase),
    ).fetchall()
    size = succeeded_here = succeeded = failed = unfinished = 0
    for r in rows:
        if r["skipped"]:
            continue
        if r["phase"] == phase:
            size += 1
            succeeded_here += r["state"] == SUCCEEDED
        succeeded += r["state"] == SUCCEEDED
        failed += r["state"] in (FAILED, ROLLED_BACK)
        unfinished += r["state"] not in FINAL
    return Progress(
        phase=phase,
        phases=row["phases"],
        phase_size=size,
        phase_succeeded=succeeded_here,
        succeeded=succeeded,
        failed=failed,
        unfinished=unfinished,
        accepted_failed=row["accepted_failed"],
        accepted_executed=row["accepted_executed"],
    )


def _phase_jobs(db: Db, rollout: str, phase: int | None) -> list[str]:
    """The jobs of the rollout's ``phase`` (None: of every phase)."""
    sql = "SELECT DISTINCT job FROM rollout_devices WHERE rollout = ? AND job IS NOT NULL"
    if phase is None:
        rows = db.execute(sql + " ORDER BY job", (rollout,))
    else:
        rows = db.execute(sql + " AND phase = ? ORDER BY job", (rollout, phase))
    return [r[0] for r in rows]


def _go(db: Db, rollout: str, phase: int, now: float, reason: str) -> int:
    """A download-only rollout's installs begin with the current phase; devices released."""
    db.execute("UPDATE rollouts SET go = ? WHERE id = ?", (now, rollout))
    released = sum(
        len(jobstore.set_install(db, job, INSTALL_NOW)) for job in _phase_jobs(db, rollout, phase)
    )
    _event(db, rollout, now, RUNNING, f"{reason}: phase {phase + 1}, {released} device(s)")
    return released


def _cancel_holds(db: Db, rollout: str) -> int:
    """Held downloads of a cancelled or aborted rollout are dropped by their devices."""
    return sum(
        len(jobstore.set_install(db, job, INSTALL_CANCEL)) for job in _phase_jobs(db, rollout, None)
    )


def _start_phase(db: Db, rollout: str, spec: Spec, phase: int, now: float) -> int:
    if spec.download_only and phase > 0:  # its job was made held at the start: release it
        jobs = _phase_jobs(db, rollout, phase)
        db.execute("UPDATE rollouts SET phase = ? WHERE id = ?", (phase, rollout))
        return sum(len(jobstore.set_install(db, job, INSTALL_NOW)) for job in jobs)
    if spec.download_only:  # the start: every phase gets its job, held
        total = sum(_make_phase_job(db, rollout, spec, p, now) for p in _phases(db, rollout))
        db.execute("UPDATE rollouts SET phase = 0 WHERE id = ?", (rollout,))
        return total
    sent = _make_phase_job(db, rollout, spec, phase, now)
    db.execute("UPDATE rollouts SET phase = ? WHERE id = ?", (phase, rollout))
    return sent


def _phases(db: Db, rollout: str) -> list[int]:
    rows = db.execute(
        "SELECT DISTINCT phase FROM rollout_devices WHERE rollout = ? ORDER BY phase", (rollout,)
    )
    return [r[0] for r in rows]


def _make_phase_job(db: Db, rollout: str, spec: Spec, phase: int, now: float) -> int:
    devices = [
        r[0]
        for r in db.execute(
            "SELECT device FROM rollout_devices WHERE rollout = ? AND phase = ? ORDER BY device",
            (rollout, phase),
        )
    ]
    busy = jobstore.busy_devices(db, devices)
    for device, job in busy.items():
        db.execute(
            "UPDATE rollout_devices SET skipped = ? WHERE rollout = ? AND device = ?",
            (f"busy with job {job}", rollout, device),
        )
    free = [d for d in devices if d not in busy]
    if free:
        target = f"rollout:{rollout}:{phase + 1}"
        job = jobstore.insert_job(db, spec.artifact, free, target, now, hold=spec.download_only)
        db.executemany(
            "UPDATE rollout_devices SET job = ? WHERE rollout = ? AND device = ?",
            [(job, rollout, d) for d in free],
        )
    return len(free)


def tick(db: Db, now: float) -> list[tuple[str, str, str]]:
    """Move every active rollout one step; (rollout, action, reason) for each move made."""
    moves: list[tuple[str, str, str]] = []
    active = [
        r[0]
        for r in db.execute(
            "SELECT id FROM rollouts WHERE state IN (?, ?) ORDER BY created", (SCHEDULED, RUNNING)
        )
    ]
    for rollout in active:
        with db.write():
            row = db.execute("SELECT * FROM rollouts WHERE id = ?", (rollout,)).fetchone()
            if row["state"] not in (SCHEDULED, RUNNING):
                continue  # another copy moved it meanwhile
            spec = _spec(row["spec"])
            progress = None if row["phase"] < 0 else _progress(db, rollout, row["phase"])
            d = decide(spec, row["state"], progress, now)
            waiting = spec.download_only and row["phase"] >= 0 and row["go"] is None
            if waiting and d.action == "next":
                d = WAIT  # (a phase succeeds only by installs: not before the go)
            if d.action == "wait":
                if waiting and spec.install_at is not None and now >= spec.install_at:
                    released = _go(db, rollout, row["phase"], now, "install time reached")
                    moves.append((rollout, "go", f"{released} device(s) released"))
                continue
            if d.action in ("start", "next"):
                phase = row["phase"] + 1
                sent = _start_phase(db, rollout, spec, phase, now)
                if spec.download_only and phase == 0:
                    reason = (
                        f"downloads started: {sent} device(s) in {row['phases']} phase(s);"
                        " the installs wait for the go"
                    )
                else:
                    reason = f"phase {phase + 1} of {row['phases']} started: {sent} device(s)"
                if d.reason:
                    reason = f"{d.reason}; {reason}"
                _event(db, rollout, now, RUNNING, reason)
                moves.append((rollout, d.action, reason))
                continue
            state = {"pause": PAUSED, "abort": ABORTED, "finish": FINISHED}[d.action]
            reason = d.reason
            if state == ABORTED:
                held = _cancel_holds(db, rollout)
                reason += f"; {held} held download(s) cancelled" if held else ""
            _event(db, rollout, now, state, reason)
            moves.append((rollout, d.action, reason))
    return moves
