"""The machine id is kept on /data: the same at every boot of the read-only root.

The root ships an empty /etc/machine-id, so systemd makes up a new id at every
boot; systemd-networkd derives its DHCP client identifier (DUID) from it, so
the device would take a new lease at every boot. The layer's
twelvefactor-machine-id.service keeps the first boot's id in /data/machine-id
and mounts it over /etc/machine-id at every later boot, before networkd.
"""

from __future__ import annotations

import re

from testbed.boot.device import Device


def test_machine_id_is_the_one_kept_on_data(device: Device) -> None:
    vm = device.vm
    if vm.boots < 2:
        # the first boot keeps its own id; a later boot must take the kept one
        device.power_cycle()
    kept = vm.check("cat /data/machine-id")
    assert re.fullmatch(r"[0-9a-f]{32}", kept), f"/data/machine-id holds {kept!r}"
    assert vm.check("cat /etc/machine-id") == kept
    assert vm.check("stat -c %a /data/machine-id") == "444"
    # mounted from the data partition over the transient id systemd made up
    source = vm.check("findmnt -n -o SOURCE /etc/machine-id | tail -n 1")
    assert source.endswith("[/machine-id]"), source
    state = vm.run("systemctl is-active twelvefactor-machine-id.service").output.strip()
    assert state == "active"
