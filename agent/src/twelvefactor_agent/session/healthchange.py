"""Whether a health sample is news: what an operator would act on changed (pure).

The agent samples its health every `agent.health_interval` seconds but sends
it only when it differs from the last one sent in a way that matters, or
when `agent.health_heartbeat` seconds have passed (issue 18: an idle device
sent the same figures every minute, a third of its traffic). Measures that
drift all the time are news only once they have moved far from what was
last sent, so that noise is not: free space on /data by 5 % of its size,
available memory by 10 % of the total, the queue's bytes by 10 % of its
bound, the one-minute load by a factor of two (of 1 + load). Anything else that changes (the slot,
a version, the last error, a dropped message, a queue fault) is news at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

EXACT = ("slot", "os_version", "agent_version", "last_error")
QUEUE_EXACT = ("dropped", "fault")


def _share(part: object, whole: object) -> float | None:
    if not isinstance(part, int | float) or not isinstance(whole, int | float) or whole <= 0:
        return None
    return min(max(part / whole, 0.0), 1.0)


def _moved(before: float | None, after: float | None, step: float) -> bool:
    """Moved by a step or more since it was sent (not: crossed a line, which noise does)."""
    if before is None or after is None:
        return (before is None) != (after is None)
    return abs(after - before) >= step


def _load(health: Mapping[str, Any]) -> float | None:
    load = health.get("load")
    if not isinstance(load, list) or not load or not isinstance(load[0], int | float):
        return None
    return math.log2(1.0 + max(float(load[0]), 0.0))


def changed(
    sent: Mapping[str, Any] | None, sample: Mapping[str, Any], queue_max_bytes: int
) -> bool:
    """True if `sample` is news after `sent` (the last report sent; None: none yet)."""
    if sent is None:
        return True
    if any(sent.get(k) != sample.get(k) for k in EXACT):
        return True
    q0, q1 = sent.get("queue") or {}, sample.get("queue") or {}
    if any(q0.get(k) != q1.get(k) for k in QUEUE_EXACT):
        return True
    d0, d1 = sent.get("data") or {}, sample.get("data") or {}
    m0, m1 = sent.get("memory") or {}, sample.get("memory") or {}
    return (
        _moved(
            _share(q0.get("bytes"), queue_max_bytes), _share(q1.get("bytes"), queue_max_bytes), 0.1
        )
        or _moved(
            _share(d0.get("free_bytes"), d0.get("total_bytes")),
            _share(d1.get("free_bytes"), d1.get("total_bytes")),
            0.05,
        )
        or _moved(
            _share(m0.get("available_kb"), m0.get("total_kb")),
            _share(m1.get("available_kb"), m1.get("total_kb")),
            0.1,
        )
        or _moved(_load(sent), _load(sample), 1.0)
    )
