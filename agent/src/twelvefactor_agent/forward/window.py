"""The forward window: which queued messages are handed to MQTT, and when.

Pure bookkeeping, no I/O. At most `size` messages are in flight (published,
PUBACK not yet seen); the client library's own in-flight limit is set to the
same number, so it never buffers beyond the window while offline. Messages go
out in seq order. A PUBACK maps back to its seq, which the caller deletes from
the queue. On disconnect everything in flight returns to pending: the queue
on disk is the only source of truth, and the next connection resends from the
oldest pending seq (the solution service deduplicates on (device, seq)).
"""

from __future__ import annotations


class ForwardWindow:
    __slots__ = ("cursor", "in_flight", "size")

    def __init__(self, size: int = 100) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.size = size
        # mid -> seq of every message published and not yet acknowledged.
        self.in_flight: dict[int, int] = {}
        # Highest seq handed out on this connection; the next read starts after it.
        self.cursor = 0

    def room(self) -> int:
        """How many more messages may be published now."""
        return self.size - len(self.in_flight)

    def sent(self, seq: int, mid: int) -> None:
        """Record a publish. Seqs must increase: the queue is read in order."""
        if seq <= self.cursor:
            raise ValueError(f"seq {seq} published out of order (cursor {self.cursor})")
        if mid in self.in_flight:
            raise ValueError(f"message id {mid} is already in flight")
        if self.room() <= 0:
            raise ValueError("window is full")
        self.in_flight[mid] = seq
        self.cursor = seq

    def acked(self, mid: int) -> int | None:
        """The seq a PUBACK for `mid` settles, or None for an unknown mid
        (a late acknowledgement from a connection already reset)."""
        return self.in_flight.pop(mid, None)

    def reset(self) -> list[int]:
        """Connection lost: forget the in-flight set; return the seqs that go back to pending."""
        pending = sorted(self.in_flight.values())
        self.in_flight.clear()
        self.cursor = 0
        return pending
