"""The remotely managed configuration: an overlay on the device's TOML file.

The management service sends a document of tables (JSON); the agent lays it
over the provisioned configuration and validates the result with the same
pure validator as the file (`config.validate`), so whatever the file may not
hold (a third endpoint, an unknown key, a value out of range) an overlay may
not hold either. Only the keys below may be managed remotely: the device's
identity, its data directory, its socket and state file, and its update
policy stay what provisioning wrote, so a configuration can never move the
agent's own state, make it present another certificate or let it install an
older release.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from twelvefactor_agent.config.settings import Config, ConfigError, _type_name, validate

# table -> keys the management service may set
MANAGED: dict[str, frozenset[str]] = {
    "management": frozenset({"host", "port"}),
    "solution": frozenset({"host", "port"}),
    "agent": frozenset({"health_interval", "health_heartbeat", "keepalive"}),
    "queue": frozenset({"max_bytes", "max_age", "max_message_bytes"}),
    "backoff": frozenset({"initial", "multiplier", "cap"}),
    "link": frozenset({"profile", "checkin_interval", "checkin_max", "early_bytes", "early_age"}),
}
# Tables of the file that exist but are provisioning's alone.
PROVISIONED = frozenset({"device", "update"})

Overlay = dict[str, dict[str, Any]]


def check_shape(doc: object) -> list[str]:
    """Problems with an overlay's shape (tables and keys), before any value is looked at."""
    if not isinstance(doc, dict):
        return [f"config: expected a table of tables, got {_type_name(doc)}"]
    problems = []
    for table, body in doc.items():
        if not isinstance(table, str):  # pragma: no cover - JSON keys are strings
            problems.append(f"config: {table!r}: not a table name")
            continue
        if table in PROVISIONED:
            problems.append(f"config: {table}: set by provisioning, not managed remotely")
            continue
        if table not in MANAGED:
            if isinstance(body, dict | list):
                problems.append(
                    f"config: {table}: only two endpoints exist, [management] and [solution]; "
                    "a third endpoint is not allowed"
                )
            else:
                problems.append(f"config: {table}: unknown key")
            continue
        if not isinstance(body, dict):
            problems.append(f"config: {table}: expected a table, got {_type_name(body)}")
            continue
        for key in body:
            if key in MANAGED[table]:
                continue
            if table == "agent" and key in ("data_dir", "socket", "socket_group", "state_file"):
                problems.append(f"config: agent.{key}: set by provisioning, not managed remotely")
            elif table == "agent" and key == "confirm_window":
                problems.append(
                    "config: agent.confirm_window: set by provisioning, not managed remotely"
                )
            else:
                problems.append(f"config: {table}.{key}: unknown key")
    return problems


def merge(base: Mapping[str, Any], overlay: Overlay) -> dict[str, Any]:
    """The base document with the overlay's keys laid over it (neither is changed)."""
    out = copy.deepcopy(dict(base))
    for table, body in overlay.items():
        section = out.get(table)
        merged = dict(section) if isinstance(section, dict) else {}
        merged.update(body)
        out[table] = merged
    return out


def effective(base: Mapping[str, Any], overlay: object) -> Config:
    """The configuration the agent runs with under `overlay`, or ConfigError saying why not."""
    problems = check_shape(overlay)
    if problems:
        raise ConfigError(problems)
    assert isinstance(overlay, dict)
    return validate(merge(base, overlay))


def needs_confirmation(old: Config, new: Config) -> frozenset[str]:
    """The sessions that must reach their service before a change counts as good.

    Endpoints, keepalive, health interval and heartbeat, and backoff decide whether and how
    the agent reaches the services, so any change to them is tried under a
    confirmation window; the management session must come up in every such
    case, and the solution session too when its endpoint moved. The queue's
    bounds change nothing on the wire: they apply at once (empty set).
    """
    if (old.management, old.solution, old.backoff, old.link) == (
        new.management,
        new.solution,
        new.backoff,
        new.link,
    ):
        same_agent = (
            old.agent.keepalive,
            old.agent.health_interval,
            old.agent.health_heartbeat,
        ) == (
            new.agent.keepalive,
            new.agent.health_interval,
            new.agent.health_heartbeat,
        )
        if same_agent:
            return frozenset()
    if old.solution != new.solution:
        return frozenset({"management", "solution"})
    return frozenset({"management"})
