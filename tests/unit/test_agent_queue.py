"""The SQLite queue on a tmp file: order, seqs, bounds, drop counter, crash safety."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from twelvefactor_agent.config.settings import QueueSettings
from twelvefactor_agent.forward.queue import Queue, QueueUnavailable
from twelvefactor_agent.forward.retention import CLOCK_FLOOR

T0 = CLOCK_FLOOR + 1000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def open_queue(
    path: Path, clock: Clock | None = None, max_bytes: int = 1 << 20, max_age: int = 3600
) -> Queue:
    settings = QueueSettings(max_bytes=max_bytes, max_age=max_age, max_message_bytes=1024)
    return Queue(path / "queue.db", settings, clock=clock or Clock())


def test_messages_come_back_in_seq_order(tmp_path: Path) -> None:
    q = open_queue(tmp_path)
    assert q.append_many([("a", b"1"), ("b", b"22")]) == [1, 2]
    assert q.append_many([("a", b"333")]) == [3]
    got = q.pending(0, 10)
    assert [(m.seq, m.stream, m.payload, m.ts) for m in got] == [
        (1, "a", b"1", T0),
        (2, "b", b"22", T0),
        (3, "a", b"333", T0),
    ]
    assert [m.seq for m in q.pending(1, 1)] == [2]
    stats = q.stats()
    assert (stats.depth, stats.bytes, stats.dropped, stats.oldest_ts) == (3, 6, 0, T0)


def test_remove_after_puback(tmp_path: Path) -> None:
    q = open_queue(tmp_path)
    q.append_many([("s", b"x" * 10)] * 5)
    q.remove([2, 4])
    q.remove([2])  # a second PUBACK for a deleted row changes nothing
    assert [m.seq for m in q.pending(0, 10)] == [1, 3, 5]
    assert (q.stats().depth, q.stats().bytes, q.stats().dropped) == (3, 30, 0)


def test_seqs_are_never_reused_even_after_everything_is_deleted_and_reopened(
    tmp_path: Path,
) -> None:
    q = open_queue(tmp_path)
    q.append_many([("s", b"x")] * 3)
    q.remove([1, 2, 3])
    q.close()
    q = open_queue(tmp_path)
    assert q.stats().depth == 0
    assert q.last_seq() == 3
    assert q.append_many([("s", b"y")]) == [4]


def test_byte_bound_drops_oldest_and_counts_them(tmp_path: Path) -> None:
    q = open_queue(tmp_path, max_bytes=65536)
    for _ in range(64):
        q.append_many([("s", b"x" * 1024)])
    assert q.stats().dropped == 0
    assert q.append_many([("s", b"y" * 1000)]) == [65]
    stats = q.stats()
    assert (stats.depth, stats.bytes, stats.dropped) == (64, 63 * 1024 + 1000, 1)
    assert q.pending(0, 1)[0].seq == 2
    # A batch larger than the bound keeps only its newest messages.
    q.append_many([("s", b"z" * 1024)] * 70)
    stats = q.stats()
    assert stats.depth == 64 and stats.bytes == 65536 and stats.dropped == 71
    assert q.pending(0, 1)[0].seq == 65 + 70 - 63


def test_drop_counter_persists_and_never_goes_back(tmp_path: Path) -> None:
    q = open_queue(tmp_path, max_bytes=65536)
    q.append_many([("s", b"x" * 1000)] * 70)
    dropped = q.stats().dropped
    assert dropped == 70 - 65
    q.remove([seq for seq in range(1, 100)])  # delivery does not count as dropped
    q.close()
    assert open_queue(tmp_path).stats().dropped == dropped


def test_age_expiry_counts_as_dropped(tmp_path: Path) -> None:
    clock = Clock()
    q = open_queue(tmp_path, clock, max_age=3600)
    q.append_many([("s", b"old")] * 2)
    clock.now += 1800
    q.append_many([("s", b"new")])
    assert q.expire() == 0
    clock.now += 1801
    assert q.expire() == 2
    assert [m.payload for m in q.pending(0, 10)] == [b"new"]
    assert q.stats().dropped == 2 and q.stats().oldest_ts == T0 + 1800


def test_unset_clock_keeps_the_backlog(tmp_path: Path) -> None:
    clock = Clock()
    clock.now = 1000.0  # 1970: no RTC, no time sync yet
    q = open_queue(tmp_path, clock, max_age=3600)
    q.append_many([("s", b"early")])
    assert q.expire() == 0
    clock.now = T0 + 86400 * 30  # time sync jumps the clock forward
    assert q.expire() == 0
    assert q.stats().depth == 1


def test_oversized_message_is_refused_before_storing(tmp_path: Path) -> None:
    q = open_queue(tmp_path)
    with pytest.raises(ValueError, match="over 1024"):
        q.append_many([("s", b"ok"), ("s", b"x" * 1025)])
    assert q.stats().depth == 0


def test_full_disk_is_unavailable_and_loses_nothing_accepted(tmp_path: Path) -> None:
    q = open_queue(tmp_path, max_bytes=1 << 30)
    accepted: list[int] = []
    # The database cannot grow past its current size plus a few pages: the
    # same SQLITE_FULL error a full data partition gives.
    q._db.execute("PRAGMA max_page_count = 40")
    with pytest.raises(QueueUnavailable, match="full"):
        for _ in range(1000):
            accepted += q.append_many([("s", b"p" * 1000)] * 4)
    assert accepted and len(accepted) < 4000
    q.close()
    q = open_queue(tmp_path, max_bytes=1 << 30)
    assert [m.seq for m in q.pending(0, 10_000)] == accepted
    assert q.stats().depth == len(accepted)


def test_abandoned_connection_loses_no_committed_message(tmp_path: Path) -> None:
    """A connection dropped without close (what kill -9 leaves behind: a WAL
    file that was never checkpointed) still holds every committed message."""
    q = open_queue(tmp_path)
    seqs = q.append_many([("s", bytes([i % 256]) * 100) for i in range(500)])
    q.remove(seqs[:100])
    # Start a transaction and never finish it: it must vanish.
    q._db.execute("BEGIN IMMEDIATE")
    q._db.execute("INSERT INTO messages (stream, ts, payload) VALUES ('s', 0, x'00')")
    wal = tmp_path / "queue.db-wal"
    assert wal.exists() and wal.stat().st_size > 0
    # Copy the files as they are on disk now, as a crash would leave them.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for name in ("queue.db", "queue.db-wal"):
        (crashed / name).write_bytes((tmp_path / name).read_bytes())
    q2 = open_queue(crashed)
    assert [m.seq for m in q2.pending(0, 1000)] == seqs[100:]
    assert q2.append_many([("s", b"next")]) == [501]
    stats = q2.stats()
    assert (stats.depth, stats.bytes) == (401, 400 * 100 + 4)


def test_two_connections_share_the_file(tmp_path: Path) -> None:
    writer = open_queue(tmp_path)
    settings = QueueSettings(max_bytes=1 << 20, max_age=3600, max_message_bytes=1024)
    forwarder = Queue(tmp_path / "queue.db", settings, durable=False)
    writer.append_many([("s", b"a"), ("s", b"b")])
    got = forwarder.pending(0, 10)
    forwarder.remove([m.seq for m in got])
    assert writer.stats().depth == 0
    assert writer.append_many([("s", b"c")]) == [3]


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    open_queue(tmp_path).close()
    db = sqlite3.connect(tmp_path / "queue.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unopenable_queue_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "queue.db").mkdir()
    with pytest.raises(QueueUnavailable):
        open_queue(tmp_path)
