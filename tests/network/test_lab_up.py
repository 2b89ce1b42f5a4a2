"""The lab itself: devices online through the tunnel, configured by the layer's files."""

from __future__ import annotations

from typing import Any

from testbed.network.lab import Lab
from testbed.stack import wait_until


def test_devices_online_through_the_tunnel(lab: Lab) -> None:
    for dev in lab.devices.values():

        def recorded(device_id: str = dev.id) -> dict[str, Any] | None:
            found = lab.registry_device(device_id)
            return found if found is not None and found["online"] is True else None

        # The agent is online at its CONNACK; the management service records it a
        # moment later, from the retained online message (failed when this test ran first).
        wait_until(recorded, timeout=30, what=f"{dev.id} online in the registry")
        assert dev.tunnel is not None and dev.tunnel.name == "tf0"
