"""The store-and-forward queue: SQLite in WAL mode under agent.data_dir.

`seq INTEGER PRIMARY KEY AUTOINCREMENT` makes the device's sequence numbers
monotonic and never reused, across restarts and after deletions. A row is
deleted only after its PUBACK. Retention (bytes and age, retention.py) drops
oldest rows first and counts them in `meta.dropped`, which never goes back.

Two connections share the file: the local API appends with synchronous=FULL
(an answered publish survives power loss: the WAL is fsynced at each commit,
once per batch), the forwarder deletes with synchronous=NORMAL (a delete lost
to power loss only resends a message, which the solution service
deduplicates). Both survive kill -9: a committed transaction is in the WAL.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from twelvefactor_agent.config.settings import QueueSettings
from twelvefactor_agent.forward.retention import CLOCK_FLOOR, Row, age_cutoff, bytes_to_drop

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        stream TEXT NOT NULL,
        ts REAL NOT NULL,
        payload BLOB NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0), ('bytes', 0), ('depth', 0)",
    # This queue file's identity, made once: seqs start again at 1 in a new file (a
    # corrupt one moved aside), so the solution service deduplicates on (queue, seq).
    "INSERT OR IGNORE INTO meta (key, value)"
    " VALUES ('incarnation', random() & 9223372036854775807)",
)

# How many rows to look at per query while trimming for bytes.
_TRIM_CHUNK = 500


class QueueUnavailable(Exception):
    """The queue cannot take the message (disk full, database locked or damaged)."""


class Message(NamedTuple):
    seq: int
    stream: str
    ts: float
    payload: bytes


class QueueStats(NamedTuple):
    depth: int
    bytes: int
    dropped: int
    oldest_ts: float | None
    fault: str | None = None  # why the queue is not the one on /data it should be

    def as_json(self) -> dict[str, object]:
        return {
            "depth": self.depth,
            "bytes": self.bytes,
            "dropped": self.dropped,
            "oldest_ts": self.oldest_ts,
            "fault": self.fault,
        }


class Queue:
    """One connection to the queue file. Not thread-safe: one per thread."""

    def __init__(
        self,
        path: Path,
        settings: QueueSettings,
        *,
        durable: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.settings = settings
        self._clock = clock
        self.fault: str | None = None  # set by whoever had to fall back (agent.open_queues)
        try:
            # A "file:...?mode=memory&cache=shared" path: a queue in memory that several
            # connections share (the agent's last resort when /data cannot hold one).
            uri = str(path).startswith("file:")
            self._db = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, uri=uri
            )
            self._db.execute("PRAGMA busy_timeout = 10000")
            # 512 KiB of page cache instead of SQLite's 2 MiB: the queue is read
            # sequentially, and the device's memory budget is 25 MB in all.
            self._db.execute("PRAGMA cache_size = -512")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            with self._transaction():
                for statement in SCHEMA:
                    self._db.execute(statement)
                # Recount once at open so the running totals can never drift.
                depth, size = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages"
                ).fetchone()
                self._set("depth", depth)
                self._set("bytes", size)
                (incarnation,) = self._db.execute(
                    "SELECT value FROM meta WHERE key = 'incarnation'"
                ).fetchone()
        except sqlite3.Error as exc:
            raise QueueUnavailable(f"queue {path}: {exc}") from exc
        # 16 hex digits: the envelope's queue_id (docs/protocol.md, "Solution side")
        self.incarnation = f"{int(incarnation):016x}"

    def close(self) -> None:
        self._db.close()

    # Writing

    def append_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        """Store messages in one transaction; their seqs, in order. Nothing is
        stored if this raises QueueUnavailable."""
        if not items:
            return []
        limit = self.settings.max_message_bytes
        for _, payload in items:
            if len(payload) > limit:
                raise ValueError(f"payload of {len(payload)} bytes is over {limit}")
        now = self._clock()
        try:
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO messages (stream, ts, payload) VALUES (?, ?, ?)",
                    ((stream, now, payload) for stream, payload in items),
                )
                last = self._db.execute("SELECT last_insert_rowid()").fetchone()[0]
                added = sum(len(p) for _, p in items)
                self._add("depth", len(items))
                total = self._add("bytes", added)
                if total > self.settings.max_bytes:
                    drop = bytes_to_drop(self._oldest(), total, self.settings.max_bytes)
                    self._delete(drop, dropped=True)
        except sqlite3.Error as exc:
            raise QueueUnavailable(str(exc)) from exc
        return list(range(last - len(items) + 1, last + 1))

    def remove(self, seqs: Iterable[int], *, dropped: bool = False) -> None:
        """Delete delivered (or, with dropped=True, undeliverable) messages in one transaction."""
        seqs = list(seqs)
        if not seqs:
            return
        try:
            with self._transaction():
                self._delete(seqs, dropped=dropped)
        except sqlite3.Error as exc:
            raise QueueUnavailable(str(exc)) from exc

    def expire(self) -> int:
        """Drop messages older than max_age; how many were dropped."""
        cutoff = age_cutoff(self._clock(), self.settings.max_age)
        if cutoff is None:
            return 0
        try:
            with self._transaction():
                seqs = [
                    seq
                    for (seq,) in self._db.execute(
                        "SELECT seq FROM messages WHERE ts >= ? AND ts < ?", (CLOCK_FLOOR, cutoff)
                    )
                ]
                self._delete(seqs, dropped=True)
        except sqlite3.Error as exc:
            raise QueueUnavailable(str(exc)) from exc
        return len(seqs)

    # Reading

    def pending(self, after: int, limit: int) -> list[Message]:
        """Up to `limit` messages with seq > after, in seq order."""
        try:
            rows = self._db.execute(
                "SELECT seq, stream, ts, payload FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise QueueUnavailable(str(exc)) from exc
        # sqlite3 returns BLOBs as bytes already.
        return [Message._make(row) for row in rows]

    def stats(self) -> QueueStats:
        try:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            oldest = self._db.execute("SELECT ts FROM messages ORDER BY seq LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            raise QueueUnavailable(str(exc)) from exc
        return QueueStats(
            depth=meta["depth"],
            bytes=meta["bytes"],
            dropped=meta["dropped"],
            oldest_ts=None if oldest is None else oldest[0],
            fault=self.fault,
        )

    def last_seq(self) -> int:
        """Highest seq ever assigned (0 for a new queue)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        return 0 if row is None else int(row[0])

    # Internals (inside a transaction)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _oldest(self) -> Iterator[Row]:
        after = 0
        while True:
            rows = self._db.execute(
                "SELECT seq, LENGTH(payload), ts FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, _TRIM_CHUNK),
            ).fetchall()
            if not rows:
                return
            for seq, size, ts in rows:
                yield Row(seq, size, ts)
            after = rows[-1][0]

    def _delete(self, seqs: list[int], *, dropped: bool) -> None:
        for start in range(0, len(seqs), _TRIM_CHUNK):
            chunk = seqs[start : start + _TRIM_CHUNK]
            marks = ",".join("?" * len(chunk))
            count, size = self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages "
                f"WHERE seq IN ({marks})",
                chunk,
            ).fetchone()
            if count == 0:
                continue
            self._db.execute(f"DELETE FROM messages WHERE seq IN ({marks})", chunk)
            self._add("depth", -count)
            self._add("bytes", -size)
            if dropped:
                self._add("dropped", count)

    def _add(self, key: str, delta: int) -> int:
        row = self._db.execute(
            "UPDATE meta SET value = value + ? WHERE key = ? RETURNING value", (delta, key)
        ).fetchone()
        return int(row[0])

    def _set(self, key: str, value: int) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error.

    IMMEDIATE takes the write lock at the start, so two connections never
    deadlock upgrading a read lock; busy_timeout makes the other one wait."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


class OpenedQueues(NamedTuple):
    queues: list[Queue]
    fault: str | None  # None: the queue on /data, as it should be
    durable: bool  # False: a queue in memory; publishes must be refused


def open_queues(path: Path, settings: QueueSettings, count: int, now: float) -> OpenedQueues:
    """`count` connections to the queue at `path` (the first durable), whatever state /data is in.

    A queue that cannot be opened must not keep the device dark (the agent would
    exit before any session, for ever): a damaged file is moved aside
    (`queue.db.corrupt-<time>`, with its -wal and -shm) and a fresh one made; if
    /data cannot hold one at all (full, read-only), the queue lives in memory so
    that both sessions still run and health says why, and the caller refuses
    publishes (an answered publish must survive a power cut)."""

    def connect(target: Path) -> list[Queue]:
        opened: list[Queue] = []
        try:
            for i in range(count):
                opened.append(Queue(target, settings, durable=i == 0))
        except BaseException:
            for q in opened:
                q.close()
            raise
        return opened

    try:
        return OpenedQueues(connect(path), None, True)
    except (OSError, QueueUnavailable) as exc:
        first = str(exc)
    aside = path.with_name(f"{path.name}.corrupt-{int(now)}")
    try:
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists() or source.is_symlink():
                source.rename(aside.with_name(aside.name + suffix))
        queues = connect(path)
    except (OSError, QueueUnavailable) as exc:
        memory = Path(f"file:twelvefactor-queue-{id(settings)}?mode=memory&cache=shared")
        queues = connect(memory)
        fault = f"queue {path}: {first}; a new one failed too ({exc}): publishes are refused"
        for q in queues:
            q.fault = fault
        return OpenedQueues(queues, fault, False)
    fault = f"queue {path}: {first}; moved aside to {aside.name}, a new queue started"
    for q in queues:
        q.fault = fault
    return OpenedQueues(queues, fault, True)
