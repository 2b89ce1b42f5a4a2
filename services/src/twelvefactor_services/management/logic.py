"""What the management service decides, without I/O: payload checks and online transitions.

The device id always comes from the topic, never from the payload: the broker's
ACL ties ``mgmt/<id>/...`` to the certificate whose CN is ``<id>``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from twelvefactor_agent.protocol import envelope
from twelvefactor_agent.protocol.envelope import ProtocolError
from twelvefactor_agent.protocol.states import CONFIG_STATUSES, CONFIG_VERSION_MAX

KINDS = ("online", "meta", "health", "config")
# Size caps per kind (bytes): what the agent sends is a few hundred bytes; what is
# stored verbatim (meta, health) is bounded, so a device cannot fill the registry.
MAX_BYTES = {"online": 1024, "meta": 16 * 1024, "health": 16 * 1024, "config": 8 * 1024}
STATUSES = CONFIG_STATUSES
MAX_REASON = 200  # an online/offline reason: "lost", "shutdown", "reconfigure" in practice


class PayloadError(ProtocolError):
    """A payload the protocol says to drop (with a log line)."""


def parse_object(raw: bytes, max_bytes: int = envelope.MAX_MESSAGE) -> dict[str, Any]:
    """A protocol message (`protocol.envelope.parse`), or PayloadError saying what is wrong."""
    return envelope.parse(raw, max_bytes=max_bytes, error=PayloadError)


def number(obj: dict[str, Any], field: str) -> float:
    return envelope.number(obj, field, error=PayloadError)


@dataclass(frozen=True)
class OnlineReport:
    online: bool
    reason: str | None
    device_ts: float | None  # absent in the will
    # A device that goes to sleep (the metered profile, issue 18) says by when, on its
    # clock, it will have checked in again: `{"online": false, "reason": "asleep",
    # "next_checkin": T}`.
    next_checkin: float | None = None


@dataclass(frozen=True)
class MetaReport:
    device_ts: float
    body: dict[str, Any]


@dataclass(frozen=True)
class HealthReport:
    device_ts: float
    body: dict[str, Any]


@dataclass(frozen=True)
class ConfigReport:
    version: int
    status: str
    error: str | None


def _config_report(raw: bytes) -> ConfigReport:
    """`{"v":1,"version":N,"status":"applied|rejected|reverted","error":...}` or PayloadError."""
    obj = parse_object(raw, MAX_BYTES["config"])
    version = envelope.integer(obj, "version", 1, CONFIG_VERSION_MAX, error=PayloadError)
    status = obj.get("status")
    if status not in STATUSES:
        raise PayloadError(f"field 'status' is not one of {STATUSES}: {status!r}"[:200])
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        raise PayloadError("field 'error' is not a string")
    if error is not None:
        error = envelope.without_nul(error)
    return ConfigReport(version, str(status), None if error is None else error[:4000])


Report = OnlineReport | MetaReport | HealthReport | ConfigReport


def parse_report(device: str, kind: str, raw: bytes) -> Report:
    if kind not in KINDS:
        raise PayloadError(f"unknown management topic kind {kind!r}")
    if kind == "config":
        return _config_report(raw)
    obj = parse_object(raw, MAX_BYTES[kind])
    if kind == "online":
        online = obj.get("online")
        if not isinstance(online, bool):
            raise PayloadError(f"field 'online' is not a boolean: {online!r}")
        reason = obj.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise PayloadError(f"field 'reason' is not a string: {reason!r}"[:200])
        if reason is not None:
            reason = envelope.without_nul(reason)[:MAX_REASON]  # kept in the history: bounded
        ts = number(obj, "ts") if "ts" in obj else None
        next_checkin = None
        if "next_checkin" in obj:
            next_checkin = number(obj, "next_checkin")
            if online or ts is None:
                raise PayloadError("field 'next_checkin' goes with online false and a 'ts'")
        return OnlineReport(online, reason, ts, next_checkin)
    ts = number(obj, "ts")
    if kind == "meta":
        named = obj.get("device")
        if named is not None and named != device:
            raise PayloadError(f"meta names device {named!r} but came from {device!r}")
        return MetaReport(ts, obj)
    return HealthReport(ts, obj)


@dataclass(frozen=True)
class OnlineState:
    online: bool | None  # None: never reported. What the service shows: both of the below
    last_change: float | None
    session: bool | None = None  # what the device's sessions last said (online, will, goodbye)
    tunnel_quiet_since: float | None = None  # the hub's word (tunnelstate.py); None: alive


@dataclass(frozen=True)
class Transition:
    online: bool
    reason: str | None
    at: float  # the service's clock: a device may not have synced its clock yet
    device_ts: float | None


def online_transition(state: OnlineState, report: OnlineReport, now: float) -> Transition | None:
    """A history entry when the online state changes; None when it does not.

    Retained ``online`` messages are redelivered to every new subscriber, so
    the same state arriving again must change nothing. A device whose tunnel
    the hub has found quiet stays offline whatever a (retained) message says:
    its sessions come back as soon as the tunnel does (`tunnel_transition`).
    """
    online = report.online and state.tunnel_quiet_since is None
    if state.online is online:
        return None
    if online is report.online:
        return Transition(online, report.reason, now, report.device_ts)
    assert state.tunnel_quiet_since is not None
    return Transition(False, quiet_reason(state.tunnel_quiet_since), now, report.device_ts)


def tunnel_transition(
    state: OnlineState, alive: bool, last_rx: float, now: float
) -> Transition | None:
    """The history entry the hub's word on a device's tunnel makes, if any.

    A quiet tunnel takes an online device offline: it is off or out of reach,
    and its MQTT sessions no longer ping often enough to say so. A tunnel that
    comes back brings it online again only if its sessions never said goodbye.
    """
    online = alive and state.session is True
    if state.online is online or (state.online is None and not online):
        return None
    return Transition(online, "tunnel back" if alive else quiet_reason(last_rx), now, None)


def quiet_reason(last_rx: float) -> str:
    return "tunnel quiet: nothing received since " + time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(last_rx)
    )


# Seconds past the announced check-in before a sleeping device is overdue: the link's and
# the clock's slack (the service's --overdue-after).
OVERDUE_AFTER = 120.0


def checkin_due(report: OnlineReport, now: float) -> float | None:
    """When, on the service's clock, a device going to sleep said it will have checked in
    (its announcement is on its own clock, which may be off: only the interval counts)."""
    if report.next_checkin is None or report.device_ts is None:
        return None
    return now + (report.next_checkin - report.device_ts)


def presence(
    online: bool | None, due: float | None, now: float, overdue_after: float = OVERDUE_AFTER
) -> str | None:
    """online, asleep (until `due`), overdue (asleep and `due` more than `overdue_after`
    seconds past), offline; None for a device never seen."""
    if online is None:
        return None
    if online:
        return "online"
    if due is None:
        return "offline"
    return "asleep" if now <= due + overdue_after else "overdue"


def is_newer(stored_ts: float | None, new_ts: float) -> bool:
    """Keep the latest meta/health by the device's timestamp (copies may race)."""
    return stored_ts is None or new_ts >= stored_ts
