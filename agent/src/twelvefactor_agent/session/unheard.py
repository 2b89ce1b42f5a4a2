"""Health reports nobody heard, kept and sent again.

An MQTT 5 broker answers a QoS 1 publish that matches no subscription with
PUBACK reason 0x10, "No matching subscribers", and drops the message
(mosquitto 2.0 does; the broker still answers "success" when a shared
subscription has a member). The management service's copies subscribe with
a clean session, so between a broker restart and their new subscription, and
while every copy is down, a device's health reports were acknowledged and
lost (docs/scale.md). The management session keeps them here instead, the
newest ``LIMIT``, and sends the oldest again after a jittered backoff, as a
probe; once one report is heard (its own PUBACK, or a later report's, says
success), the rest go at once, oldest first.

Pure: the session publishes and tells what the broker answered; the clock
and the backoff's random source are given.
"""

from __future__ import annotations

import collections

from paho.mqtt.reasoncodes import ReasonCode

from twelvefactor_agent.util.backoff import Backoff

NO_MATCHING_SUBSCRIBERS = 0x10
LIMIT = 32  # reports kept; a health report is a few hundred bytes
FIRST_RETRY = 1.0  # s: the ceiling of the first probe's delay (full jitter)


def nobody_heard(reason: ReasonCode) -> bool:
    """The broker took the message and had no subscriber to give it to."""
    return reason.value == NO_MATCHING_SUBSCRIBERS


class Unheard:
    def __init__(self, backoff: Backoff, limit: int = LIMIT) -> None:
        if limit < 1:
            raise ValueError("unheard reports: the limit must be at least 1")
        self._kept: collections.deque[bytes] = collections.deque()
        self._backoff = backoff
        self._limit = limit
        self._probing = False  # the oldest is out again, its answer not yet in
        self.retry_at: float | None = None  # when to send the probe (monotonic)
        self.dropped = 0  # kept reports pushed out by newer ones (the oldest go)

    def __len__(self) -> int:
        return len(self._kept)

    def refused(self, payload: bytes, now: float, *, probe: bool = False) -> None:
        """The broker had no subscriber for this report (``probe``: it was the one sent
        again); it is kept, in the order it was first sent."""
        if probe:
            self._kept.appendleft(payload)
            self._probing = False
        else:
            self._kept.append(payload)
        while len(self._kept) > self._limit:
            self._kept.popleft()
            self.dropped += 1
        if not self._probing and (probe or self.retry_at is None):
            self.retry_at = now + self._backoff.next_delay()

    def due(self, now: float) -> bytes | None:
        """The report to send again as a probe, if its time has come."""
        if not self._kept:
            self.retry_at = None
            return None
        if self.retry_at is None or now < self.retry_at:
            return None
        self.retry_at = None
        self._probing = True
        return self._kept.popleft()

    def heard(self) -> list[bytes]:
        """A report reached a subscriber: the kept ones, to send now (oldest first)."""
        self._backoff.reset()
        self._probing = False
        self.retry_at = None
        out = list(self._kept)
        self._kept.clear()
        return out

    def lost(self) -> None:
        """The connection ended with the probe's answer outstanding: it is gone (the
        broker may have given it to a subscriber); the next report starts again."""
        self._probing = False
        if self._kept and self.retry_at is None:
            self.retry_at = 0.0  # due at once on the next connection
