"""The calls in progress, by correlation id, with their one deadline. Pure.

A proxy call (proxycall.py) crosses two threads: the local API starts it and
answers the application, the solution session carries it over MQTT. Only
this table, owned by the local API's thread, holds call state: the session
forwards every answer and every loss it sees (`Reply`, `Lost`) and the table
decides. So there is one deadline (the call's timeout and a grace for the
trip back), one bound (MAX_CALLS), and one place where a late or unknown
answer is dropped.

Each call remembers the solution connection it was handed to (its `route`:
a number the session gives each connection), so a lost connection fails
exactly the calls that were out on it, and not one started since on the next.
The caller's `token` says where the answer goes (a connection's answer slot);
the table never looks inside it.
"""

from __future__ import annotations

from typing import Generic, NamedTuple, TypeVar

from twelvefactor_agent.localapi.proxycall import refusal

# Proxy calls waiting for their answer, over all connections.
MAX_CALLS = 1024
# The solution service answers within the call's timeout; this is for the trip back.
CALL_GRACE = 1.0

T = TypeVar("T")


class Answered(NamedTuple, Generic[T]):
    """Where an answer goes, and the answer (the application's JSON object)."""

    token: T
    answer: dict[str, object]


class Reply(NamedTuple):
    """The solution session's answer to a call (the service's, or the broker's refusal)."""

    call_id: bytes
    answer: dict[str, object]


class Lost(NamedTuple):
    """The solution session's connection `route` is gone, and the calls out on it."""

    route: int
    why: str


# What the solution session reports, from its thread, to the table's owner.
CallEvent = Reply | Lost


class _Pending(NamedTuple, Generic[T]):
    token: T
    deadline: float
    timeout: float
    route: int


class CallTable(Generic[T]):
    def __init__(self, max_calls: int = MAX_CALLS, grace: float = CALL_GRACE) -> None:
        self.max_calls = max_calls
        self.grace = grace
        self._calls: dict[bytes, _Pending[T]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def full(self) -> bool:
        """No room for another call: refuse it before handing it to the session."""
        return len(self._calls) >= self.max_calls

    def start(self, now: float, call_id: bytes, timeout: float, route: int, token: T) -> None:
        """A call was handed to the solution session's connection `route`."""
        if self.full:
            raise OverflowError("the call table is full")  # the caller checks `full` first
        self._calls[call_id] = _Pending(token, now + timeout + self.grace, timeout, route)

    def receive(self, event: CallEvent) -> list[Answered[T]]:
        """What the solution session reported, as the answers it settles."""
        if isinstance(event, Reply):
            return self.complete(event.call_id, event.answer)
        return self.lost(event.route, event.why)

    def complete(self, call_id: bytes, answer: dict[str, object]) -> list[Answered[T]]:
        """The answer to a call; nothing if no such call waits (late, or not ours)."""
        pending = self._calls.pop(call_id, None)
        if pending is None:
            return []
        return [Answered(pending.token, answer)]

    def lost(self, route: int, why: str) -> list[Answered[T]]:
        """The solution connection `route` went down: its calls fail with `unavailable`."""
        gone = [cid for cid, p in self._calls.items() if p.route == route]
        return [Answered(self._calls.pop(cid).token, refusal("unavailable", why)) for cid in gone]

    def poll(self, now: float) -> list[Answered[T]]:
        """The calls whose deadline has passed, answered `timeout`; they leave the table."""
        expired = [cid for cid, p in self._calls.items() if now >= p.deadline]
        out = []
        for cid in expired:
            pending = self._calls.pop(cid)
            message = f"no answer from the solution service within {pending.timeout:g} s"
            out.append(Answered(pending.token, refusal("timeout", message)))
        return out

    def next_deadline(self) -> float | None:
        """When poll next has something to do; None with no call waiting."""
        return min((p.deadline for p in self._calls.values()), default=None)
