"""Which tunnel peers the hub should forget and add again (pure; the hub does the I/O).

WireGuard refuses a handshake initiation whose TAI64N time stamp is not newer
than the last one it accepted from that peer (replay protection), and keeps
that stamp for as long as the peer exists. A device whose clock went back is
then locked out until its clock passes the stamp: a clock that was years
ahead until NTP corrected it, or a dead RTC with no saved clock. The NTP that
would put its clock right is inside the tunnel it cannot bring up.

Removing the peer and adding it again is the only way to make WireGuard
forget a stamp. The hub does so for a peer from which it has authenticated
something since it was added (its received-bytes counter is not zero: a
stamp may be stored) but nothing for `after` seconds. A device that is up
sends at least its persistent keepalive (25 s) and its MQTT keepalives, so
only a device that is off or locked out goes quiet that long; for one that
is off, forgetting costs nothing. What it gives up: for that quiet peer, the
hub would answer one replayed old initiation (the attacker gets a handshake
response it cannot use, and the hub sends that peer's traffic to the
attacker's address until the device's next handshake, newer by its stamp,
moves it back). docs/threat-model.md has it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

DEFAULT_AFTER = 120.0  # seconds: ~5 persistent keepalives, 4 MQTT keepalives


class _Seen(NamedTuple):
    rx: int
    since: float  # when rx last changed (or was first seen)


class StaleTracker:
    def __init__(self, after: float = DEFAULT_AFTER) -> None:
        if after <= 0:
            raise ValueError(f"after must be positive, got {after}")
        self.after = after
        self._seen: dict[str, _Seen] = {}

    def observe(self, rx: Mapping[str, int], now: float) -> list[str]:
        """The peers to forget now, given every peer's received-bytes counter at `now`.

        A peer that was forgotten comes back with its counter at zero and is
        not forgotten again until it has received something and gone quiet.
        """
        stale = []
        seen: dict[str, _Seen] = {}
        for key, count in rx.items():
            last = self._seen.get(key)
            if last is None or count != last.rx:
                seen[key] = _Seen(count, now)
            elif count > 0 and now - last.since >= self.after:
                stale.append(key)
                seen[key] = _Seen(0, now)
            else:
                seen[key] = last
        self._seen = seen
        return stale


def parse_dump(text: str) -> dict[str, int]:
    """Received bytes per peer public key from `wg show INTERFACE dump`.

    The first line is the interface; each further line is a peer: public key,
    preshared key, endpoint, allowed IPs, latest handshake, rx, tx, keepalive.
    """
    rx: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) != 8 or not fields[5].isdigit():
            raise ValueError(f"unexpected line in wg show dump: {line!r}")
        rx[fields[0]] = int(fields[5])
    return rx
