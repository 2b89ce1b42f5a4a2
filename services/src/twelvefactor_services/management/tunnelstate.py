"""The tunnel's word on each device, in the registry: written by the hub, read by management.

The hub sees every WireGuard peer's received bytes (hub/liveness.py) and
writes a row here only when a device's tunnel goes quiet or comes back. The
management service reads the rows newer than the last it applied, once a
second, and turns them into online changes (logic.tunnel_transition). One
table in the management database, as the hub's `tunnel_peers` is: both
processes already share that database, and nothing new has to listen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from twelvefactor_services.management.store import Db


class TunnelChange(NamedTuple):
    seq: int
    device: str
    alive: bool
    last_rx: float


def record(db: Db, device: str, alive: bool, last_rx: float) -> None:
    """Record that a device's tunnel is alive (or quiet since `last_rx`), as the newest change.

    One write: two writers never take the same sequence number."""
    with db.write():
        db.execute(
            "INSERT INTO tunnel_liveness (device, alive, last_rx, seq) VALUES (?, ?, ?,"
            " (SELECT coalesce(max(seq), 0) + 1 FROM tunnel_liveness))"
            " ON CONFLICT(device) DO UPDATE SET alive = excluded.alive,"
            " last_rx = excluded.last_rx, seq = excluded.seq",
            (device, int(alive), last_rx),
        )


def changes_after(db: Db, seq: int) -> list[TunnelChange]:
    """The devices whose tunnel state changed after change `seq`, oldest first."""
    rows = db.execute(
        "SELECT seq, device, alive, last_rx FROM tunnel_liveness WHERE seq > ? ORDER BY seq",
        (seq,),
    ).fetchall()
    return [TunnelChange(int(s), str(d), bool(a), float(t)) for s, d, a, t in rows]
