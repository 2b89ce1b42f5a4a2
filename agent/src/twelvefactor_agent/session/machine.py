"""The state machine of one MQTT session (management or solution).

No I/O and no clock: every method takes `now` (monotonic seconds) and returns
the actions the I/O layer must carry out, in order. The I/O layer calls
`poll(now)` whenever `next_wakeup()` has passed.

    DISCONNECTED --due--> CONNECTING --CONNACK ok--> CONNECTED
         ^  ^                 |  (refused, error, no CONNACK in time)
         |  +-----backoff-----+                         |
         +-----------------------backoff--- lost -------+
    CONNECTED --stop--> STOPPING --farewell acked or timeout--> STOPPED
"""

from __future__ import annotations

import enum

from twelvefactor_agent.util.backoff import Backoff


class Phase(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Action(enum.Enum):
    CONNECT = "connect"  # open TCP + TLS and send CONNECT
    ABORT = "abort"  # close the socket, if any, without DISCONNECT (the will fires)
    UP = "up"  # session established: announce, start forwarding, record online
    DOWN = "down"  # session gone: stop forwarding, record offline
    FAREWELL = "farewell"  # stopping while connected: send the goodbye message
    DISCONNECT = "disconnect"  # send DISCONNECT (no will) and close


class SessionMachine:
    def __init__(
        self,
        backoff: Backoff,
        now: float,
        connack_timeout: float = 30.0,
        farewell_timeout: float = 5.0,
    ) -> None:
        self.backoff = backoff
        self.connack_timeout = connack_timeout
        self.farewell_timeout = farewell_timeout
        self.phase = Phase.DISCONNECTED
        self._due = now  # DISCONNECTED: next attempt; CONNECTING/STOPPING: deadline
        self.last_delay: float | None = None

    @property
    def stopped(self) -> bool:
        return self.phase is Phase.STOPPED

    @property
    def online(self) -> bool:
        return self.phase is Phase.CONNECTED

    def next_wakeup(self) -> float | None:
        """When `poll` has something to do, or None if only an event can change things."""
        if self.phase in (Phase.DISCONNECTED, Phase.CONNECTING, Phase.STOPPING):
            return self._due
        return None

    def poll(self, now: float) -> list[Action]:
        if self.phase is Phase.DISCONNECTED and now >= self._due:
            self.phase = Phase.CONNECTING
            self._due = now + self.connack_timeout
            return [Action.CONNECT]
        if self.phase is Phase.CONNECTING and now >= self._due:
            return self._retry(now, [Action.ABORT])
        if self.phase is Phase.STOPPING and now >= self._due:
            self.phase = Phase.STOPPED
            return [Action.DISCONNECT, Action.DOWN]
        return []

    def connect_failed(self, now: float) -> list[Action]:
        """The connection attempt failed: socket error, TLS error or CONNACK refusal."""
        if self.phase is not Phase.CONNECTING:
            return []
        return self._retry(now, [Action.ABORT])

    def connected(self, now: float) -> list[Action]:
        """CONNACK with success."""
        if self.phase is not Phase.CONNECTING:
            return []
        self.phase = Phase.CONNECTED
        self.backoff.reset()
        self.last_delay = None
        return [Action.UP]

    def lost(self, now: float) -> list[Action]:
        """The connection broke (socket error, keepalive timeout, DISCONNECT from the broker)."""
        if self.phase is Phase.CONNECTED:
            return self._retry(now, [Action.ABORT, Action.DOWN])
        if self.phase is Phase.CONNECTING:
            return self._retry(now, [Action.ABORT])
        if self.phase is Phase.STOPPING:
            self.phase = Phase.STOPPED
            return [Action.ABORT, Action.DOWN]
        return []

    def stop(self, now: float) -> list[Action]:
        if self.phase is Phase.CONNECTED:
            self.phase = Phase.STOPPING
            self._due = now + self.farewell_timeout
            return [Action.FAREWELL]
        if self.phase in (Phase.DISCONNECTED, Phase.CONNECTING):
            self.phase = Phase.STOPPED
            return [Action.ABORT]
        return []

    def farewell_done(self, now: float) -> list[Action]:
        """The goodbye message was acknowledged: disconnect cleanly."""
        if self.phase is not Phase.STOPPING:
            return []
        self.phase = Phase.STOPPED
        return [Action.DISCONNECT, Action.DOWN]

    def clock_set(self, now: float) -> list[Action]:
        """The wall clock was set (NTP, after a boot at 1970 or years ahead). A
        connection that failed because a certificate was "not yet valid" or had
        "expired" may succeed now: while waiting to retry, retry at once, with
        the backoff from the start."""
        if self.phase is Phase.DISCONNECTED:
            self.backoff.reset()
            self.last_delay = None
            self._due = now
        return []

    def _retry(self, now: float, actions: list[Action]) -> list[Action]:
        self.phase = Phase.DISCONNECTED
        self.last_delay = self.backoff.next_delay()
        self._due = now + self.last_delay
        return actions


class ClockWatch:
    """Notices the wall clock being set: the wall clock minus the monotonic one
    moves by more than `threshold` seconds between two looks (NTP's slewing
    moves it by far less than that per second)."""

    def __init__(self, wall: float, mono: float, threshold: float = 2.0) -> None:
        self.threshold = threshold
        self._offset = wall - mono

    def step(self, wall: float, mono: float) -> float:
        """Seconds the wall clock was set by since the last look (0.0 if not)."""
        offset = wall - mono
        moved, self._offset = offset - self._offset, offset
        return moved if abs(moved) >= self.threshold else 0.0
