"""The forward window: which queued messages are handed to MQTT, and when.

Pure bookkeeping, no I/O. At most `size` messages are in flight (published,
PUBACK not yet seen); the client library's own in-flight limit is set to the
same number of publishes, so it never buffers beyond the window while offline.
Messages go out in seq order, several in one publish (a batch,
protocol/batch.py). A PUBACK maps back to its seqs, which the caller deletes
from the queue. On disconnect everything in flight returns to pending: the queue
on disk is the only source of truth, and the next connection resends from the
oldest pending seq (the solution service deduplicates on (device, seq)).
"""

from __future__ import annotations

import itertools


class ForwardWindow:
    __slots__ = ("count", "cursor", "in_flight", "size")

    def __init__(self, size: int = 100) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.size = size
        # mid -> seqs of every publish not yet acknowledged; how many seqs in all.
        self.in_flight: dict[int, tuple[int, ...]] = {}
        self.count = 0
        # Highest seq handed out on this connection; the next read starts after it.
        self.cursor = 0

    def room(self) -> int:
        """How many more messages may be published now."""
        return self.size - self.count

    def sent(self, seqs: tuple[int, ...], mid: int) -> None:
        """Record a publish of `seqs`. Seqs must increase: the queue is read in order."""
        if not seqs:
            raise ValueError("a publish carries at least one message")
        if seqs[0] <= self.cursor or any(a >= b for a, b in itertools.pairwise(seqs)):
            raise ValueError(f"seqs {seqs} published out of order (cursor {self.cursor})")
        if mid in self.in_flight:
            raise ValueError(f"message id {mid} is already in flight")
        if len(seqs) > self.room():
            raise ValueError("window is full")
        self.in_flight[mid] = seqs
        self.count += len(seqs)
        self.cursor = seqs[-1]

    def acked(self, mid: int) -> tuple[int, ...] | None:
        """The seqs a PUBACK for `mid` settles, or None for an unknown mid
        (a late acknowledgement from a connection already reset)."""
        seqs = self.in_flight.pop(mid, None)
        if seqs is not None:
            self.count -= len(seqs)
        return seqs

    def reset(self) -> list[int]:
        """Connection lost: forget the in-flight set; return the seqs that go back to pending."""
        pending = sorted(seq for seqs in self.in_flight.values() for seq in seqs)
        self.in_flight.clear()
        self.count = 0
        self.cursor = 0
        return pending
