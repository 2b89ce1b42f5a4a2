"""The device registry in SQLite (WAL, busy timeout: several service copies share it)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twelvefactor_services.management.logic import (
    HealthReport,
    MetaReport,
    OnlineReport,
    OnlineState,
    Report,
    Transition,
    is_newer,
    online_transition,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    online INTEGER,
    last_online_change REAL,
    health TEXT,
    health_ts REAL,
    meta TEXT,
    meta_ts REAL
);
CREATE TABLE IF NOT EXISTS online_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL REFERENCES devices(id),
    online INTEGER NOT NULL,
    reason TEXT,
    ts REAL NOT NULL,
    device_ts REAL
);
CREATE INDEX IF NOT EXISTS online_history_device ON online_history(device, id);
"""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        if not path.exists():
            raise FileNotFoundError(f"no registry at {path}")
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
    db.execute("PRAGMA busy_timeout=10000")
    db.row_factory = sqlite3.Row
    return db


@contextmanager
def _write(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")  # take the write lock first: no upgrade deadlock between copies
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Registry:
    def __init__(self, path: Path) -> None:
        self.db = connect(path)

    def close(self) -> None:
        self.db.close()

    def apply(self, device: str, report: Report, now: float) -> Transition | None:
        """Record one report; returns the online transition it caused, if any."""
        with _write(self.db):
            self.db.execute(
                "INSERT OR IGNORE INTO devices (id, first_seen) VALUES (?, ?)", (device, now)
            )
            row = self.db.execute(
                "SELECT online, last_online_change, health_ts, meta_ts FROM devices WHERE id = ?",
                (device,),
            ).fetchone()
            if isinstance(report, OnlineReport):
                online = None if row["online"] is None else bool(row["online"])
                state = OnlineState(online, row["last_online_change"])
                t = online_transition(state, report, now)
                if t is not None:
                    self.db.execute(
                        "UPDATE devices SET online = ?, last_online_change = ? WHERE id = ?",
                        (int(t.online), t.at, device),
                    )
                    self.db.execute(
                        "INSERT INTO online_history (device, online, reason, ts, device_ts)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (device, int(t.online), t.reason, t.at, t.device_ts),
                    )
                return t
            if isinstance(report, MetaReport):
                if is_newer(row["meta_ts"], report.device_ts):
                    self.db.execute(
                        "UPDATE devices SET meta = ?, meta_ts = ? WHERE id = ?",
                        (json.dumps(report.body), report.device_ts, device),
                    )
                return None
            assert isinstance(report, HealthReport)
            if is_newer(row["health_ts"], report.device_ts):
                self.db.execute(
                    "UPDATE devices SET health = ?, health_ts = ? WHERE id = ?",
                    (json.dumps(report.body), report.device_ts, device),
                )
            return None


def _device(row: sqlite3.Row, *, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "first_seen": row["first_seen"],
        "online": None if row["online"] is None else bool(row["online"]),
        "last_online_change": row["last_online_change"],
        "health_ts": row["health_ts"],
        "meta_ts": row["meta_ts"],
    }
    if full:
        out["health"] = json.loads(row["health"]) if row["health"] else None
        out["meta"] = json.loads(row["meta"]) if row["meta"] else None
    return out


def list_devices(db: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = db.execute("SELECT * FROM devices ORDER BY id").fetchall()
    return [_device(r, full=False) for r in rows]


def get_device(db: sqlite3.Connection, device: str) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM devices WHERE id = ?", (device,)).fetchone()
    return None if row is None else _device(row, full=True)


def history(db: sqlite3.Connection, device: str) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT online, reason, ts, device_ts FROM online_history WHERE device = ? ORDER BY id",
        (device,),
    ).fetchall()
    return [
        {
            "online": bool(r["online"]),
            "reason": r["reason"],
            "ts": r["ts"],
            "device_ts": r["device_ts"],
        }
        for r in rows
    ]
