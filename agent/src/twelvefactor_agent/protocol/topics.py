"""Topic names: ``<side>/<device>/<up|down>/<leaf...>`` (docs/protocol.md, "Sessions").

``mgmt`` is the management session's side and ``sol`` the solution's. The
broker's ACL lets a device write only under its own ``.../up/`` and read its own
``.../down/``, so the device id in a topic is the one its certificate names.
"""

from __future__ import annotations

from dataclasses import dataclass

MGMT = "mgmt"
SOL = "sol"

# What the services subscribe to (through shared subscriptions).
MANAGEMENT_UP = "mgmt/+/up/#"
SOLUTION_DATA_UP = "sol/+/up/data/+"
SOLUTION_PROXY_UP = "sol/+/up/proxy"


def mgmt_up(device: str, leaf: str) -> str:
    return f"{MGMT}/{device}/up/{leaf}"


def mgmt_down(device: str, leaf: str) -> str:
    return f"{MGMT}/{device}/down/{leaf}"


def sol_up(device: str, leaf: str) -> str:
    return f"{SOL}/{device}/up/{leaf}"


def sol_down(device: str, leaf: str) -> str:
    return f"{SOL}/{device}/down/{leaf}"


def data(device: str, stream: str) -> str:
    return sol_up(device, f"data/{stream}")


@dataclass(frozen=True)
class UpTopic:
    side: str  # MGMT or SOL
    device: str
    rest: tuple[str, ...]  # the levels after "up"


def parse_up(topic: str) -> UpTopic | None:
    """``<side>/<id>/up/<rest...>``, or None for anything else."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] not in (MGMT, SOL) or parts[2] != "up" or not parts[1]:
        return None
    return UpTopic(parts[0], parts[1], tuple(parts[3:]))
