"""Desired configuration per device and per group, without I/O.

A device's *effective* desired configuration is its group's overlay with the
device's own overlay laid over it, table by table (a device belongs to at
most one group). The service checks an overlay's shape with the agent's own
rules (`twelvefactor_agent.config.overlay.check_shape`: only the managed tables and
keys, never a third endpoint, never identity or paths); the values are
checked by the device against its provisioned file, and it reports
`rejected` with the reason if they do not fit.
"""

from __future__ import annotations

import json
from typing import Any

from twelvefactor_agent.config.overlay import check_shape
from twelvefactor_agent.protocol.names import DEVICE_ID_RE, FLEET_GROUP_RE

MAX_OVERLAY = 16 * 1024

Overlay = dict[str, dict[str, Any]]


class OverlayError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def check_overlay(doc: object) -> Overlay:
    """An overlay the service accepts (shape only), or OverlayError listing the problems."""
    problems = check_shape(doc)
    if not problems:
        try:
            size = len(json.dumps(doc, allow_nan=False))
        except ValueError:
            problems = ["config: numbers must be finite"]
        else:
            if size > MAX_OVERLAY:
                problems = [f"config: larger than {MAX_OVERLAY} bytes"]
    if problems:
        raise OverlayError(problems)
    assert isinstance(doc, dict)
    return doc


def check_group(name: str) -> str:
    if not FLEET_GROUP_RE.fullmatch(name):
        raise OverlayError([f"{name[:80]!r} is not a group name ([a-z0-9][a-z0-9_-]{{0,62}})"])
    return name


def check_device(device: str) -> str:
    if not DEVICE_ID_RE.fullmatch(device) or device in ("management", "solution"):
        raise OverlayError([f"{device[:80]!r} is not a device id"])
    return device


def effective(group: Overlay | None, device: Overlay | None) -> Overlay:
    """The group's overlay with the device's laid over it (neither is changed)."""
    out: Overlay = {}
    for layer in (group or {}, device or {}):
        for table, body in layer.items():
            out[table] = {**out.get(table, {}), **body}
    return out


def desired_document(version: int, config: Overlay) -> bytes:
    """The retained payload on mgmt/<id>/down/config."""
    return json.dumps(
        {"v": 1, "version": version, "config": config}, separators=(",", ":"), sort_keys=True
    ).encode()
