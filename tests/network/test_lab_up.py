"""The lab itself: devices online through the tunnel, configured by the layer's files."""

from __future__ import annotations

from testbed.network.lab import Lab


def test_devices_online_through_the_tunnel(lab: Lab) -> None:
    for dev in lab.devices.values():
        found = lab.registry_device(dev.id)
        assert found is not None and found["online"] is True
        assert dev.tunnel is not None and dev.tunnel.name == "tf0"
