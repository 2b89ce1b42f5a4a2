"""Deduplication, outbox and receiver leases in SQLite (shared by all service copies).

A message is accepted once per (device, seq): the dedup row and one outbox row
per receiver are written in one transaction, and the MQTT message is
acknowledged only after it commits. Outbox rows leave when their receiver has
taken the message, or, after too many refusals, for the dead letters, where
the operator sees them (`twelvefactor-solution dead-letters`): one message a
receiver will never take must not hold back the device's later ones for ever.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from twelvefactor_services.solution.envelope import Envelope

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    device TEXT NOT NULL,
    queue_id TEXT NOT NULL,             -- the device's queue file ('' before version 1)
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    ts REAL NOT NULL,
    received_ts REAL NOT NULL,
    PRIMARY KEY (device, queue_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver TEXT NOT NULL,
    device TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    record TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (receiver, device, queue_id, seq)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,              -- the outbox row's id
    receiver TEXT NOT NULL,
    device TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    record TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    set_aside REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    receiver TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL
);
"""


VERSION = 1  # PRAGMA user_version: 1 = deduplication per (device, queue_id, seq)
# Version 0 deduplicated on (device, seq): its rows move over with queue_id ''.
MIGRATE_FROM_0 = (
    """
ALTER TABLE messages RENAME TO messages_v0;
ALTER TABLE outbox RENAME TO outbox_v0;
DROP TABLE IF EXISTS dead_letters;
"""
    + SCHEMA
    + """
INSERT INTO messages SELECT device, '', seq, stream, ts, received_ts FROM messages_v0;
INSERT INTO outbox (id, receiver, device, queue_id, seq, record, attempts, last_error)
    SELECT id, receiver, device, '', seq, record, attempts, last_error FROM outbox_v0;
DROP TABLE messages_v0;
DROP TABLE outbox_v0;
"""
)


@dataclass(frozen=True)
class Pending:
    id: int
    device: str
    queue_id: str
    seq: int
    record: str


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an acked message must survive power loss
        self.db.execute("PRAGMA busy_timeout=10000")
        self._migrate()

    def _migrate(self) -> None:
        with self._write():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version == VERSION:
                return
            old = self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
            ).fetchone()
            script = MIGRATE_FROM_0 if old else SCHEMA
            for statement in script.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version = {VERSION}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def accept(self, env: Envelope, received_ts: float, receivers: Sequence[str]) -> bool:
        """True for a new (device, queue_id, seq); False for a duplicate (nothing written)."""
        return self.accept_all([env], received_ts, receivers) == 1

    def accept_all(
        self, envs: Sequence[Envelope], received_ts: float, receivers: Sequence[str]
    ) -> int:
        """Store the messages of one publish in one transaction; how many were new
        (a duplicate writes nothing)."""
        new = 0
        with self._write():
            for env in envs:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO messages (device, queue_id, seq, stream, ts,"
                    " received_ts) VALUES (?, ?, ?, ?, ?, ?)",
                    (env.device, env.queue_id, env.seq, env.stream, env.ts, received_ts),
                )
                if cur.rowcount != 1:
                    continue
                new += 1
                record = env.record(received_ts)
                self.db.executemany(
                    "INSERT INTO outbox (receiver, device, queue_id, seq, record)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(r, env.device, env.queue_id, env.seq, record) for r in receivers],
                )
        return new

    def pending(self, receiver: str, limit: int = 100, skip: Collection[str] = ()) -> list[Pending]:
        """The receiver's backlog, per device in the order accepted, leaving out the devices
        in `skip` (those waiting to retry: another device's messages go on meanwhile)."""
        marks = ",".join("?" * len(skip))
        rows = self.db.execute(
            "SELECT id, device, queue_id, seq, record FROM outbox WHERE receiver = ?"
            f" AND device NOT IN ({marks}) ORDER BY device, id LIMIT ?",
            (receiver, *skip, limit),
        ).fetchall()
        return [Pending(*r) for r in rows]

    def delivered(self, item_id: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))

    def failed(self, item_id: int, error: str, max_attempts: int, now: float) -> int:
        """Count a refusal; the attempts so far. At `max_attempts` the message moves to
        the dead letters (and 0 is returned: the device's next message may go)."""
        with self._write():
            self.db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error[:500], item_id),
            )
            row = self.db.execute("SELECT attempts FROM outbox WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                return 0
            if row[0] < max_attempts:
                return int(row[0])
            self.db.execute(
                "INSERT INTO dead_letters (id, receiver, device, queue_id, seq, record, attempts,"
                " last_error, set_aside) SELECT id, receiver, device, queue_id, seq, record,"
                " attempts, last_error, ? FROM outbox WHERE id = ?",
                (now, item_id),
            )
            self.db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            return 0

    def dead_letters(self) -> list[dict[str, object]]:
        """Messages a receiver refused too often, oldest first."""
        cur = self.db.execute(
            "SELECT receiver, device, queue_id, seq, attempts, last_error, set_aside, record"
            " FROM dead_letters ORDER BY set_aside, id"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def lease(self, receiver: str, owner: str, now: float, ttl: float) -> bool:
        """Take or renew the right to deliver to ``receiver`` (one copy at a time, in order)."""
        with self._write():
            row = self.db.execute(
                "SELECT owner, until FROM leases WHERE receiver = ?", (receiver,)
            ).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return False
            self.db.execute(
                "INSERT INTO leases (receiver, owner, until) VALUES (?, ?, ?)"
                " ON CONFLICT (receiver) DO UPDATE SET owner = excluded.owner,"
                " until = excluded.until",
                (receiver, owner, now + ttl),
            )
            return True

    def release(self, receiver: str, owner: str) -> None:
        self.db.execute("DELETE FROM leases WHERE receiver = ? AND owner = ?", (receiver, owner))

    def counts(self) -> dict[str, int]:
        """Accepted messages and each receiver's backlog."""
        out = {"accepted": self.db.execute("SELECT count(*) FROM messages").fetchone()[0]}
        for receiver, n in self.db.execute(
            "SELECT receiver, count(*) FROM outbox GROUP BY receiver"
        ):
            out[f"pending.{receiver}"] = n
        for receiver, n in self.db.execute(
            "SELECT receiver, count(*) FROM dead_letters GROUP BY receiver"
        ):
            out[f"dead.{receiver}"] = n
        return out
