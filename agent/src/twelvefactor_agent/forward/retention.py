"""Queue retention: which stored messages to drop to stay within the bounds.

Pure decisions; the queue module feeds rows from SQLite and executes them.
Bounds: total payload bytes (`max_bytes`, oldest dropped first until the
queue fits) and age (`max_age` seconds since the agent accepted a message).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

# Timestamps before this are from a clock that was never set (no RTC, no time
# sync yet: 1970). Messages stamped then are never expired by age, and no age
# expiry runs while the clock itself reads earlier, so a device that boots at
# 1970 does not throw away its backlog when the clock jumps forward.
CLOCK_FLOOR = 1_704_067_200.0  # 2024-01-01T00:00:00Z


class Row(NamedTuple):
    seq: int
    size: int
    ts: float


def bytes_to_drop(oldest_first: Iterable[Row], total_bytes: int, max_bytes: int) -> list[int]:
    """Seqs to drop, oldest first, so that the remaining payloads sum to <= max_bytes."""
    excess = total_bytes - max_bytes
    drop: list[int] = []
    if excess <= 0:
        return drop
    for row in oldest_first:
        drop.append(row.seq)
        excess -= row.size
        if excess <= 0:
            return drop
    raise ValueError(f"rows account for less than total_bytes ({total_bytes})")


def age_cutoff(now: float, max_age: float) -> float | None:
    """Messages with CLOCK_FLOOR <= ts < cutoff are expired; None: do not expire now."""
    if now < CLOCK_FLOOR:
        return None
    return now - max_age


def is_expired(ts: float, now: float, max_age: float) -> bool:
    cutoff = age_cutoff(now, max_age)
    return cutoff is not None and CLOCK_FLOOR <= ts < cutoff
