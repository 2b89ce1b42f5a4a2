"""The tunnel's word on each device, in the registry: written by the hub, read by management.

The hub sees every WireGuard peer's received bytes (hub/liveness.py) and
writes a row here only when a device's tunnel goes quiet or comes back. The
management service reads the rows newer than the last it applied, once a
second, and turns them into online changes (logic.tunnel_transition). One
table in the registry's database, as the hub's `tunnel_peers` is: both
processes already share that file, and nothing new has to listen.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS tunnel_liveness (
    device TEXT PRIMARY KEY,
    alive INTEGER NOT NULL,
    last_rx REAL NOT NULL,              -- wall clock: when the hub last received from it
    seq INTEGER NOT NULL                -- order of changes, for the reader
);
CREATE INDEX IF NOT EXISTS tunnel_liveness_seq ON tunnel_liveness(seq);
"""


class TunnelChange(NamedTuple):
    seq: int
    device: str
    alive: bool
    last_rx: float


def create(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


def record(db: sqlite3.Connection, device: str, alive: bool, last_rx: float) -> None:
    """Record that a device's tunnel is alive (or quiet since `last_rx`), as the newest change.

    `db` is in autocommit mode; one statement, so two writers never interleave."""
    db.execute(
        "INSERT INTO tunnel_liveness (device, alive, last_rx, seq) VALUES (?, ?, ?,"
        " (SELECT coalesce(max(seq), 0) + 1 FROM tunnel_liveness))"
        " ON CONFLICT(device) DO UPDATE SET alive = excluded.alive, last_rx = excluded.last_rx,"
        " seq = excluded.seq",
        (device, int(alive), last_rx),
    )


def changes_after(db: sqlite3.Connection, seq: int) -> list[TunnelChange]:
    """The devices whose tunnel state changed after change `seq`, oldest first."""
    rows = db.execute(
        "SELECT seq, device, alive, last_rx FROM tunnel_liveness WHERE seq > ? ORDER BY seq",
        (seq,),
    ).fetchall()
    return [TunnelChange(int(s), str(d), bool(a), float(t)) for s, d, a, t in rows]
