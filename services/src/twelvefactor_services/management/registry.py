"""The device registry, in the management database (store.py: SQLite or PostgreSQL,
shared by every service copy and the hub).

A device appears in `devices` on first contact. Enrolment (`twelvefactor-hub
enrol`) records it before that in `enrolments`: its hardware, tags, the
certificate it was given and when; decommissioning marks it retired there
(when, and the group it left) and keeps every other row, its online history
included. `get_device` and `devicelist.list_devices` show both.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from twelvefactor_agent.protocol.names import FLEET_GROUP_RE, TAG_RE

from twelvefactor_services.management import tunnelstate
from twelvefactor_services.management.configlogic import Overlay, effective
from twelvefactor_services.management.logic import (
    OVERDUE_AFTER,
    ConfigReport,
    HealthReport,
    MetaReport,
    OnlineReport,
    OnlineState,
    Report,
    Transition,
    checkin_due,
    is_newer,
    online_transition,
    presence,
    tunnel_transition,
)
from twelvefactor_services.management.store import Db, Row
from twelvefactor_services.management.tunnelstate import TunnelChange

log = logging.getLogger("twelvefactor.management")
HISTORY_KEPT = 1000  # online changes kept per device, newest
HEALTH_KEPT = 1000  # health samples kept per device, newest (the console's charts)
EVENTS_KEPT = 10_000  # rows of `events` kept, newest
EVENTS_PAGE = 200  # events per source in one answer of `events`


def _online_state(db: Db, device: str) -> OnlineState | None:
    row = db.execute(
        "SELECT online, last_online_change, session_online AS session, tunnel_quiet_since"
        " FROM devices WHERE id = ?",
        (device,),
    ).fetchone()
    if row is None:
        return None
    return OnlineState(
        _flag(row["online"]),
        row["last_online_change"],
        _flag(row["session"]),
        row["tunnel_quiet_since"],
    )


def _flag(value: int | None) -> bool | None:
    """A boolean kept as an integer, that may be unknown."""
    return None if value is None else bool(value)


# A configuration or job goes out through the broker of the device's shard: the one its
# last connect came through, else the one its enrolment named; a device neither says is
# published by every shard's copy (the retained message is harmless where it is not).
SHARD_OF = "COALESCE(d.shard, e.shard)"


def shard_filter(shard: str | None) -> tuple[str, tuple[str, ...]]:
    """The condition (on `devices d` and `enrolments e`) that a copy of `shard` publishes
    for; a copy of no shard publishes for every device."""
    if shard is None:
        return "", ()
    return f" AND ({SHARD_OF} IS NULL OR {SHARD_OF} = ?)", (shard,)


class Registry:
    def __init__(self, db: Db, shard: str | None = None) -> None:
        """`shard`: the hub shard whose broker this process consumes from (None: one)."""
        self.db = db
        self.shard = shard

    def apply(self, device: str, report: Report, now: float) -> Transition | None:
        """Record one report; returns the online transition it caused, if any."""
        with self.db.write():
            if isinstance(report, HealthReport):  # most reports: the fewest round trips
                self._record_health(device, report, now)
                return None
            self.db.execute(
                "INSERT INTO devices (id, first_seen) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (device, now),
            )
            row = self.db.execute(
                "SELECT health_ts, meta_ts FROM devices WHERE id = ?", (device,)
            ).fetchone()
            if isinstance(report, OnlineReport):
                state = _online_state(self.db, device)
                assert state is not None  # inserted above
                if self.shard is not None:  # it connected through this shard's broker
                    self.db.execute(
                        "UPDATE devices SET shard = ? WHERE id = ? AND shard IS DISTINCT FROM ?",
                        (self.shard, device, self.shard),
                    )
                self.db.execute(
                    "UPDATE devices SET session_online = ? WHERE id = ?",
                    (int(report.online), device),
                )
                self._record_checkin(device, report, now)
                t = online_transition(state, report, now)
                if t is not None:
                    self._record_transition(device, t)
                return t
            if isinstance(report, ConfigReport):
                self._record_config_report(device, report, now)
                return None
            if isinstance(report, MetaReport):
                if is_newer(row["meta_ts"], report.device_ts):
                    self.db.execute(
                        "UPDATE devices SET meta = ?, meta_ts = ? WHERE id = ?",
                        (json.dumps(report.body), report.device_ts, device),
                    )
                return None
            return None

    def _record_health(self, device: str, report: HealthReport, now: float) -> None:
        """The device's last health (kept if not older than the one kept: copies may race,
        logic.is_newer) and one point of its series: three statements for a known device
        (on PostgreSQL each is a round trip; the registry takes one per device per
        health interval)."""
        version = report.body.get("os_version")
        kept = (
            json.dumps(report.body),
            report.device_ts,
            version if isinstance(version, str) else None,
        )
        newer = self.db.execute(
            "UPDATE devices SET health = ?, health_ts = ?, os_version = ?"
            " WHERE id = ? AND (health_ts IS NULL OR health_ts <= ?)",
            (*kept, device, report.device_ts),
        )
        if newer.rowcount == 0:  # a device not seen before, or a report older than the last
            self.db.execute(
                "INSERT INTO devices (id, first_seen, health, health_ts, os_version)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (device, now, *kept),
            )
        # An older report still joins the series: one nobody heard comes again after
        # newer ones (session/unheard.py); health_series orders by the device's time.
        self._record_health_sample(device, report)

    def _record_checkin(self, device: str, report: OnlineReport, now: float) -> None:
        """Asleep until when, from a goodbye that says so; a retained one delivered again
        (a service restart) keeps the time worked out when it first came."""
        due = checkin_due(report, now)
        if due is None:
            self.db.execute(
                "UPDATE devices SET checkin_due = NULL, checkin_said = NULL WHERE id = ?",
                (device,),
            )
            return
        self.db.execute(
            "UPDATE devices SET checkin_due = ?, checkin_said = ? WHERE id = ?"
            " AND checkin_said IS DISTINCT FROM ?",
            (due, report.device_ts, device, report.device_ts),
        )

    def apply_tunnel(self, change: TunnelChange, now: float) -> Transition | None:
        """Record the hub's word on a device's tunnel; the online transition it caused, if any.

        A device never seen on MQTT is not in `devices` yet: nothing to record."""
        with self.db.write():
            state = _online_state(self.db, change.device)
            if state is None:
                return None
            self.db.execute(
                "UPDATE devices SET tunnel_quiet_since = ? WHERE id = ?",
                (None if change.alive else change.last_rx, change.device),
            )
            t = tunnel_transition(state, change.alive, change.last_rx, now)
            if t is not None:
                self._record_transition(change.device, t)
            return t

    def tunnel_changes(self, after: int) -> list[TunnelChange]:
        return tunnelstate.changes_after(self.db, after)

    def _record_transition(self, device: str, t: Transition) -> None:
        self.db.execute(
            "UPDATE devices SET online = ?, last_online_change = ? WHERE id = ?",
            (int(t.online), t.at, device),
        )
        self.db.execute(
            "INSERT INTO online_history (device, online, reason, ts, device_ts)"
            " VALUES (?, ?, ?, ?, ?)",
            (device, int(t.online), t.reason, t.at, t.device_ts),
        )
        # A device flapping on purpose must not grow the registry without end.
        self.db.execute(
            "DELETE FROM online_history WHERE device = ? AND id <= (SELECT id FROM"
            " online_history WHERE device = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (device, device, HISTORY_KEPT),
        )

    def _record_health_sample(self, device: str, report: HealthReport) -> None:
        """One point of the device's health series; the oldest beyond HEALTH_KEPT go."""
        self.db.execute(
            "INSERT INTO health_samples (device, ts, load1, memory_available_kb,"
            " memory_total_kb, data_free_bytes, data_total_bytes, queue_depth, queue_dropped)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (device, report.device_ts, *health_sample(report.body)),
        )
        self.db.execute(
            "DELETE FROM health_samples WHERE device = ? AND id <= (SELECT id FROM"
            " health_samples WHERE device = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (device, device, HEALTH_KEPT),
        )

    # -- desired configuration ----------------------------------------------------

    def _record_config_report(self, device: str, report: ConfigReport, now: float) -> None:
        row = self.db.execute(
            "SELECT reported_version, reported_status, version FROM device_config WHERE device = ?",
            (device,),
        ).fetchone()
        if row is not None and report.version > row["version"]:
            # A device reports only versions it was sent: a higher one is a lie that
            # would push every later version of the device (and its group's) out of range.
            # The bound is the version set, not the one marked published: the device can
            # apply and report a version before the broker's acknowledgement is recorded.
            log.warning(
                "%s reports configuration version %d, above the %d set for it: ignored",
                device,
                report.version,
                row["version"],
            )
            return
        if row is None:
            # A report without a desired configuration here (the registry was reset):
            # keep it; the next version set for the device starts above it.
            self._config_event(device, report, now)
            self.db.execute(
                "INSERT INTO device_config (device, overlay, version, desired, updated, published,"
                " reported_version, reported_status, reported_error, reported_ts)"
                " VALUES (?, NULL, ?, '{}', ?, ?, ?, ?, ?, ?)",
                (
                    device,
                    report.version,
                    now,
                    report.version,
                    report.version,
                    report.status,
                    report.error,
                    now,
                ),
            )
            return
        if row["reported_version"] is not None and report.version < row["reported_version"]:
            return  # an older report arriving late
        if (row["reported_version"], row["reported_status"]) != (report.version, report.status):
            self._config_event(device, report, now)  # not the same report repeated
        self.db.execute(
            "UPDATE device_config SET reported_version = ?, reported_status = ?,"
            " reported_error = ?, reported_ts = ? WHERE device = ?",
            (report.version, report.status, report.error, now, device),
        )

    def _config_event(self, device: str, report: ConfigReport, now: float) -> None:
        added = self.db.execute(
            "INSERT INTO events (ts, kind, device, subject, state, reason)"
            " VALUES (?, 'config', ?, ?, ?, ?) RETURNING id",
            (now, device, str(report.version), report.status, report.error),
        ).scalar()
        self.db.execute("DELETE FROM events WHERE id <= ?", (added - EVENTS_KEPT,))

    def set_device_config(self, device: str, overlay: Overlay | None, now: float) -> int:
        """Set (or with None clear) a device's own overlay; its desired version."""
        with self.db.write():
            self._ensure_config_row(device, now)
            self.db.execute(
                "UPDATE device_config SET overlay = ? WHERE device = ?",
                (None if overlay is None else json.dumps(overlay), device),
            )
            return self._refresh(device, now)

    def set_group_config(self, group: str, overlay: Overlay, now: float) -> dict[str, int]:
        """Create or replace a group's overlay; the new desired version of each member."""
        with self.db.write():
            self.db.execute(
                "INSERT INTO config_groups (name, overlay, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET overlay = excluded.overlay,"
                " updated = excluded.updated",
                (group, json.dumps(overlay), now),
            )
            members = [
                r["device"]
                for r in self.db.execute(
                    "SELECT device FROM config_members WHERE grp = ? ORDER BY device", (group,)
                )
            ]
            return {d: self._refresh(d, now) for d in members}

    def add_members(self, group: str, devices: list[str], now: float) -> dict[str, int]:
        """Put devices in a group (moving them out of any other); their desired versions."""
        with self.db.write():
            if not self._group_exists(group):
                raise KeyError(group)
            out = {}
            for device in devices:
                self._ensure_config_row(device, now)
                self.db.execute(
                    "INSERT INTO config_members (device, grp) VALUES (?, ?)"
                    " ON CONFLICT(device) DO UPDATE SET grp = excluded.grp",
                    (device, group),
                )
                out[device] = self._refresh(device, now)
            return out

    def remove_members(self, group: str, devices: list[str], now: float) -> dict[str, int]:
        with self.db.write():
            if not self._group_exists(group):
                raise KeyError(group)
            out = {}
            for device in devices:
                cur = self.db.execute(
                    "DELETE FROM config_members WHERE device = ? AND grp = ?", (device, group)
                )
                if cur.rowcount:
                    out[device] = self._refresh(device, now)
            return out

    # -- enrolment ----------------------------------------------------------------------

    def enrol(
        self,
        device: str,
        *,
        hardware: dict[str, str] | None,
        group: str | None,
        tags: list[str],
        certificate_serial: int,
        now: float,
    ) -> dict[str, Any]:
        """Record an enrolled device and, with ``group``, make it a member (the group is
        made with an empty configuration if it does not exist), in one transaction."""
        with self.db.write():
            kept = check_enrolment(self.db, device, group, tags)
            self.db.execute(
                "INSERT INTO enrolments (device, hardware, tags, certificate_serial, enrolled,"
                " shard) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    device,
                    None if hardware is None else json.dumps(hardware),
                    json.dumps(kept),
                    f"{certificate_serial:x}",
                    now,
                    self.shard,
                ),
            )
            if group is not None:
                self.db.execute(
                    "INSERT INTO config_groups (name, overlay, updated)"
                    " VALUES (?, '{}', ?) ON CONFLICT DO NOTHING",
                    (group, now),
                )
                self._ensure_config_row(device, now)
                self.db.execute(
                    "INSERT INTO config_members (device, grp) VALUES (?, ?)", (device, group)
                )
                self._refresh(device, now)
        found = enrolment(self.db, device)
        assert found is not None
        return found

    def retire(self, device: str, now: float, certificate_serial: int | None) -> dict[str, Any]:
        """Mark a device retired and take it out of its fleet group (no group job or
        configuration is made for it again); every other row stays, its online history
        included. A device made before enrolment existed gets its enrolment row now.
        Its enrolment as ``enrolment`` shows it."""
        with self.db.write():
            row = self.db.execute(
                "SELECT retired FROM enrolments WHERE device = ?", (device,)
            ).fetchone()
            if row is not None and row["retired"] is not None:
                raise EnrolmentError(f"{device} was already decommissioned")
            if row is None:
                self.db.execute(
                    "INSERT INTO enrolments (device, tags, certificate_serial) VALUES (?, '[]', ?)",
                    (device, None if certificate_serial is None else f"{certificate_serial:x}"),
                )
            member = self.db.execute(
                "SELECT grp FROM config_members WHERE device = ?", (device,)
            ).fetchone()
            self.db.execute(
                "UPDATE enrolments SET retired = ?, retired_group = ? WHERE device = ?",
                (now, None if member is None else member["grp"], device),
            )
            self.db.execute("DELETE FROM config_members WHERE device = ?", (device,))
        found = enrolment(self.db, device)
        assert found is not None
        return found

    def unpublished(self) -> list[tuple[str, int, Overlay]]:
        """Desired configurations not yet published, of this process's shard: (device,
        version, config)."""
        where, args = shard_filter(self.shard)
        rows = self.db.execute(
            "SELECT c.device, c.version, c.desired FROM device_config c"
            " LEFT JOIN devices d ON d.id = c.device LEFT JOIN enrolments e ON e.device = c.device"
            f" WHERE c.published < c.version{where} ORDER BY c.device",
            args,
        ).fetchall()
        return [(r["device"], r["version"], json.loads(r["desired"])) for r in rows]

    def mark_published(self, device: str, version: int) -> None:
        with self.db.write():
            self.db.execute(
                "UPDATE device_config SET published = ? WHERE device = ? AND published < ?",
                (version, device, version),
            )

    def _group_exists(self, group: str) -> bool:
        row = self.db.execute("SELECT 1 FROM config_groups WHERE name = ?", (group,)).fetchone()
        return row is not None

    def _ensure_config_row(self, device: str, now: float) -> None:
        self.db.execute(
            "INSERT INTO device_config (device, overlay, version, desired, updated)"
            " VALUES (?, NULL, 0, '{}', ?) ON CONFLICT DO NOTHING",
            (device, now),
        )

    def _refresh(self, device: str, now: float) -> int:
        """Recompute a device's effective configuration; a new version if it changed."""
        row = self.db.execute(
            "SELECT d.overlay, d.version, d.desired, d.reported_version, g.overlay AS group_overlay"
            " FROM device_config d LEFT JOIN config_members m ON m.device = d.device"
            " LEFT JOIN config_groups g ON g.name = m.grp WHERE d.device = ?",
            (device,),
        ).fetchone()
        group = json.loads(row["group_overlay"]) if row["group_overlay"] else None
        own = json.loads(row["overlay"]) if row["overlay"] else None
        wanted = effective(group, own)
        version: int = row["version"]
        if version > 0 and json.loads(row["desired"]) == wanted:
            return version
        # Above anything the device may have seen, even from an older registry.
        version = max(version, row["reported_version"] or 0) + 1
        self.db.execute(
            "UPDATE device_config SET version = ?, desired = ?, updated = ? WHERE device = ?",
            (version, json.dumps(wanted), now, device),
        )
        return version


def device_config(db: Db, device: str) -> dict[str, Any] | None:
    """A device's configuration as the API and CLI show it, or None if it has none."""
    row = db.execute(
        "SELECT d.*, m.grp FROM device_config d LEFT JOIN config_members m"
        " ON m.device = d.device WHERE d.device = ?",
        (device,),
    ).fetchone()
    if row is None:
        return None
    return {
        "device": device,
        "version": row["version"] or None,
        "group": row["grp"],
        "overlay": json.loads(row["overlay"]) if row["overlay"] else None,
        "desired": json.loads(row["desired"]),
        "published": row["published"] or None,
        "reported": None
        if row["reported_version"] is None
        else {
            "version": row["reported_version"],
            "status": row["reported_status"],
            "error": row["reported_error"],
            "ts": row["reported_ts"],
        },
    }


def group_config(db: Db, group: str) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM config_groups WHERE name = ?", (group,)).fetchone()
    if row is None:
        return None
    members = [
        r["device"]
        for r in db.execute(
            "SELECT device FROM config_members WHERE grp = ? ORDER BY device", (group,)
        )
    ]
    return {
        "name": group,
        "config": json.loads(row["overlay"]),
        "updated": row["updated"],
        "members": members,
    }


def list_groups(db: Db) -> list[dict[str, Any]]:
    names = [r["name"] for r in db.execute("SELECT name FROM config_groups ORDER BY name")]
    return [g for g in (group_config(db, n) for n in names) if g is not None]


# -- enrolment ------------------------------------------------------------------------


class EnrolmentError(ValueError):
    """An enrolment or decommission the registry refuses; the message says why."""


def check_tags(tags: list[str]) -> list[str]:
    for tag in tags:
        if not TAG_RE.fullmatch(tag):
            raise EnrolmentError(f"invalid tag {tag!r}: must match [a-z0-9][a-z0-9_.:=-]{{0,62}}")
    return sorted(set(tags))


def check_enrolment(db: Db, device: str, group: str | None, tags: list[str]) -> list[str]:
    """EnrolmentError unless ``device`` may be enrolled now; the tags as kept."""
    row = db.execute("SELECT retired FROM enrolments WHERE device = ?", (device,)).fetchone()
    if row is not None:
        state = "was decommissioned" if row["retired"] is not None else "is already enrolled"
        raise EnrolmentError(
            f"{device} {state}: a device id is enrolled once (its history stays with it)"
        )
    if group is not None and not FLEET_GROUP_RE.fullmatch(group):
        raise EnrolmentError(f"invalid group {group!r}: must match [a-z0-9][a-z0-9_-]{{0,62}}")
    return check_tags(tags)


def enrolment(db: Db, device: str) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM enrolments WHERE device = ?", (device,)).fetchone()
    return None if row is None else _enrolment(row)


def _enrolment(row: Row) -> dict[str, Any]:
    return {
        "hardware": json.loads(row["hardware"]) if row["hardware"] else None,
        "tags": json.loads(row["tags"]),
        "certificate_serial": row["certificate_serial"],
        "enrolled": row["enrolled"],
        "retired": None
        if row["retired"] is None
        else {"at": row["retired"], "group": row["retired_group"]},
    }


_NOT_ENROLLED: dict[str, Any] = {
    "hardware": None,
    "tags": [],
    "certificate_serial": None,
    "enrolled": None,
    "retired": None,
}


def _device(row: Row, *, full: bool, overdue_after: float) -> dict[str, Any]:
    online = _flag(row["online"])
    out: dict[str, Any] = {
        "id": row["id"],
        "first_seen": row["first_seen"],
        "online": online,
        # online, asleep (the metered profile), overdue (missed its check-in), offline
        "presence": presence(online, row["checkin_due"], time.time(), overdue_after),
        "next_checkin": row["checkin_due"],
        "last_online_change": row["last_online_change"],
        "health_ts": row["health_ts"],
        "meta_ts": row["meta_ts"],
        "shard": row["shard"],  # the hub shard it belongs to (None: a fleet of one)
    }
    out["os_version"] = row["os_version"]  # from its last health report
    out["group"] = row["grp"]  # its configuration group, if any
    enrolled = dict(_NOT_ENROLLED) if row["tags"] is None else _enrolment(row)
    if not full:
        enrolled.pop("certificate_serial")
    out |= enrolled
    if full:
        out["health"] = json.loads(row["health"]) if row["health"] else None
        out["meta"] = json.loads(row["meta"]) if row["meta"] else None
    return out


# A device enrolled but never seen has a row in `enrolments` only: it is shown with
# first_seen and online null. The columns of both tables, side by side.
_DEVICES_AND_ENROLMENTS = """
SELECT d.id, d.first_seen, d.online, d.last_online_change, d.health, d.health_ts, d.meta,
       d.meta_ts, d.checkin_due, d.os_version, e.hardware, e.tags, e.certificate_serial,
       e.enrolled, e.retired, e.retired_group, COALESCE(d.shard, e.shard) AS shard
  FROM devices d LEFT JOIN enrolments e ON e.device = d.id
UNION ALL
SELECT e.device, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, e.hardware, e.tags,
       e.certificate_serial, e.enrolled, e.retired, e.retired_group, e.shard
  FROM enrolments e WHERE e.device NOT IN (SELECT id FROM devices)
"""
# ... with the configuration group each is in (a device is in at most one)
DEVICES_LISTED = f"""
SELECT d.*, m.grp FROM ({_DEVICES_AND_ENROLMENTS}) AS d
  LEFT JOIN config_members m ON m.device = d.id
"""


def device_summary(row: Row, overdue_after: float = OVERDUE_AFTER) -> dict[str, Any]:
    """A device as GET /devices lists it (a row of DEVICES_LISTED)."""
    return _device(row, full=False, overdue_after=overdue_after)


def get_device(db: Db, device: str, overdue_after: float = OVERDUE_AFTER) -> dict[str, Any] | None:
    row = db.execute(f"SELECT * FROM ({DEVICES_LISTED}) AS d WHERE id = ?", (device,)).fetchone()
    return None if row is None else _device(row, full=True, overdue_after=overdue_after)


def history(
    db: Db, device: str, *, limit: int = HISTORY_KEPT, before: int | None = None
) -> list[dict[str, Any]]:
    """The device's last `limit` online changes (before entry id `before`), oldest first.

    Each entry has its `id`: the next page back is `before=<the first entry's id>`."""
    rows = db.execute(
        "SELECT * FROM (SELECT id, online, reason, ts, device_ts FROM online_history"
        " WHERE device = ? AND id < ? ORDER BY id DESC LIMIT ?) AS h ORDER BY id",
        (device, 2**63 - 1 if before is None else before, limit),
    ).fetchall()
    return [
        {
            "id": r["id"],
            "online": bool(r["online"]),
            "reason": r["reason"],
            "ts": r["ts"],
            "device_ts": r["device_ts"],
        }
        for r in rows
    ]


# -- health series and events feed (the console) --------------------------------------


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _int(value: Any) -> int | None:
    """A whole number a 64-bit column holds (a device's nonsense beyond it is None: it
    would fail the whole report's write)."""
    n = _number(value)
    return None if n is None or not -(2**63) <= n < 2**63 else int(n)


def health_sample(body: dict[str, Any]) -> tuple[Any, ...]:
    """(load1, memory available/total kB, data free/total bytes, queue depth, dropped) of a
    health report; None for what the report lacks or gives in the wrong type."""

    def part(name: str) -> dict[str, Any]:
        value = body.get(name)
        return value if isinstance(value, dict) else {}

    load = body.get("load")
    load1 = _number(load[0]) if isinstance(load, list) and load else None
    memory, data, queue = part("memory"), part("data"), part("queue")
    return (
        load1,
        _int(memory.get("available_kb")),
        _int(memory.get("total_kb")),
        _int(data.get("free_bytes")),
        _int(data.get("total_bytes")),
        _int(queue.get("depth")),
        _int(queue.get("dropped")),
    )


def health_series(
    db: Db, device: str, *, since: float | None = None, limit: int = HEALTH_KEPT
) -> list[dict[str, Any]]:
    """The device's newest ``limit`` health samples (with ts after ``since``), oldest
    first, by the device's time: a report it sent again (session/unheard.py) is recorded
    after newer ones. The series keeps the last HEALTH_KEPT recorded."""
    rows = db.execute(
        "SELECT * FROM (SELECT * FROM health_samples WHERE device = ? AND ts > ?"
        " ORDER BY ts DESC, id DESC LIMIT ?) AS h ORDER BY ts, id",
        (device, -1.0 if since is None else since, limit),
    ).fetchall()
    return [
        {
            "ts": r["ts"],
            "load1": r["load1"],
            "memory_available_kb": r["memory_available_kb"],
            "memory_total_kb": r["memory_total_kb"],
            "data_free_bytes": r["data_free_bytes"],
            "data_total_bytes": r["data_total_bytes"],
            "queue_depth": r["queue_depth"],
            "queue_dropped": r["queue_dropped"],
        }
        for r in rows
    ]


# The feed's sources: (letter of its cursor, table). Each has its own id sequence, so a
# cursor is the last id seen of each, as `o12_e5_r3_a40`.
EVENT_SOURCES = (("o", "online_history"), ("e", "events"), ("r", "rollout_events"), ("a", "audit"))
CURSOR_RE = re.compile(r"o(\d{1,18})_e(\d{1,18})_r(\d{1,18})_a(\d{1,18})")


def parse_cursor(text: str) -> dict[str, int] | None:
    m = CURSOR_RE.fullmatch(text)
    if m is None:
        return None
    return {letter: int(m.group(i + 1)) for i, (letter, _) in enumerate(EVENT_SOURCES)}


def _event_rows(db: Db, letter: str, limit: int, after: dict[str, int] | None) -> list[Row]:
    table = dict(EVENT_SOURCES)[letter]
    where = " AND status < 400" if letter == "a" else ""  # changes made, not refusals
    if after is None:  # the newest
        sql = (
            f"SELECT * FROM (SELECT * FROM {table} WHERE TRUE {where} ORDER BY id DESC LIMIT ?)"
            " AS newest ORDER BY id"
        )
        return db.execute(sql, (limit,)).fetchall()
    sql = f"SELECT * FROM {table} WHERE id > ? {where} ORDER BY id LIMIT ?"
    return db.execute(sql, (after[letter], limit)).fetchall()


def _event(letter: str, r: Row) -> dict[str, Any]:
    out: dict[str, Any] = {"id": f"{letter}{r['id']}", "ts": r["ts"]}
    if letter == "o":
        out |= {
            "kind": "online" if r["online"] else "offline",
            "device": r["device"],
            "reason": r["reason"],
        }
    elif letter == "e":
        out |= {
            "kind": r["kind"],
            "device": r["device"],
            ("job" if r["kind"] == "job" else "version"): r["subject"],
            "state": r["state"],
            "reason": r["reason"],
        }
    elif letter == "r":
        out |= {"kind": "rollout", "rollout": r["rollout"], "state": r["state"]}
        out["reason"] = r["reason"]
    else:
        out |= {
            "kind": "audit",
            "operator": r["operator"],
            "method": r["method"],
            "path": r["path"],
            "status": r["status"],
        }
    return out


def events(
    db: Db,
    after: dict[str, int] | None,
    *,
    audit: bool,
    limit: int = EVENTS_PAGE,
) -> dict[str, Any]:
    """Fleet events after the cursor ``after`` (None: the newest), oldest first, and the
    cursor to ask with next. Without ``audit`` (a viewer) the audit log's entries are left
    out. The tables of jobstore, rolloutstore and operators must exist."""
    found: list[tuple[float, int, int, dict[str, Any]]] = []
    cursor: dict[str, int] = {}
    with db.snapshot():  # one state of every table: the cursor matches the rows
        for order, (letter, table) in enumerate(EVENT_SOURCES):
            if after is None:
                cursor[letter] = db.execute(f"SELECT MAX(id) FROM {table}").scalar() or 0
            skip = letter == "a" and not audit
            rows = [] if skip else _event_rows(db, letter, limit, after)
            if after is not None:
                cursor[letter] = rows[-1]["id"] if rows else after[letter]
            found += [(r["ts"], order, r["id"], _event(letter, r)) for r in rows]
    found.sort(key=lambda f: f[:3])
    return {
        "events": [f[3] for f in found],
        "next": "_".join(f"{letter}{cursor[letter]}" for letter, _ in EVENT_SOURCES),
    }
