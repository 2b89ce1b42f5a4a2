"""Which tunnel peers are alive, from what WireGuard received (pure; the hub does the I/O).

A device that is up sends its WireGuard persistent keepalive every 25 s when
it has nothing else to send, so the hub's received-bytes counter for its
peer moves at least that often. A peer whose counter has not moved for
`after` seconds is quiet: the device is off, or its link is gone. This is
how the management service learns within two minutes that a device went
away, without the device's MQTT sessions pinging every 30 s to prove the
same thing a third time (issue 18; docs/decisions.md).

A counter that goes down belongs to a peer that was removed and added again
(hub/stale.py): that is not traffic, only a new baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

DEFAULT_AFTER = 75.0  # seconds: three persistent keepalives missed


class Change(NamedTuple):
    key: str  # the peer's public key
    alive: bool
    last_rx: float  # when its counter last moved (the caller's clock), or first seen


class _Peer(NamedTuple):
    rx: int
    since: float  # when rx last went up, or when the peer was first seen
    alive: bool | None  # None: not yet decided


class LivenessTracker:
    def __init__(self, after: float = DEFAULT_AFTER) -> None:
        if after <= 0:
            raise ValueError(f"after must be positive, got {after}")
        self.after = after
        self._peers: dict[str, _Peer] = {}

    def observe(self, rx: Mapping[str, int], now: float) -> list[Change]:
        """The peers whose state changed, given every peer's received-bytes counter at `now`.

        A peer seen for the first time is undecided: it becomes alive when its
        counter moves and quiet when it does not for `after` seconds, so a hub
        that starts beside a device that is already off reports it quiet.
        Peers no longer in `rx` are forgotten without a change.
        """
        changes = []
        peers: dict[str, _Peer] = {}
        for key, count in rx.items():
            last = self._peers.get(key)
            if last is None:
                peer = _Peer(count, now, None)
            elif count > last.rx:
                peer = _Peer(count, now, True)
                if last.alive is not True:
                    changes.append(Change(key, True, now))
            elif count < last.rx:
                peer = last._replace(rx=count)
            elif now - last.since >= self.after and last.alive is not False:
                peer = last._replace(alive=False)
                changes.append(Change(key, False, last.since))
            else:
                peer = last
            peers[key] = peer
        self._peers = peers
        return changes

    def undecide(self, key: str) -> None:
        """A change could not be passed on: the next `observe` reports the peer's state
        again (its counter and the time it last moved are kept)."""
        peer = self._peers.get(key)
        if peer is not None:
            self._peers[key] = peer._replace(alive=None)
