"""An update end to end on the device: the signed .swu for the other slot,
made from the image under test with the layer's sw-description and signing
key, is installed by the device's own SWUpdate (the layer's start-up
arguments: the selection for the slot not running, the trusted certificate),
then the device boots the new slot, comes back online and confirms it.

The .swu reaches the device as a read-only virtio disk: the serial console is
too slow for 190 MB, and the device's network reaches nothing but the hub.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bootdevice import ROOT, Device
from bootvm import BOOT_TIMEOUT, KERNEL_SLOT

from refimage import disk, swu

INSTALL_TIMEOUT = 900.0  # gunzip + raw write of the root file system under TCG


@pytest.fixture(scope="module")
def update_file(boot_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("swu")
    rootfs = work / "rootfs-a.ext4"
    disk.extract(boot_image, "rootfs-a", rootfs)
    out = swu.build_swu(ROOT, boot_image, rootfs, work / "update.swu", version="1.1")
    rootfs.unlink()
    return out


def _env(device: Device) -> dict[str, str]:
    out = device.vm.check("twelvefactor-bootenv get")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_swu_installs_into_slot_b_and_boots(device: Device, update_file: Path) -> None:
    vm = device.vm
    vm.check("sync")
    vm.power_cut()
    vm.extra_drives = [update_file]
    try:
        device.boot("before the update (A)")
    finally:
        vm.extra_drives = []
    assert vm.check("twelvefactor-swupdate-selection") == "stable,copy2"
    # SWUpdate's daemon, as the layer starts it (20-twelvefactor: the selection for
    # the slot not running, the trusted certificate), installs what the client hands it.
    # The daemon's sockets are systemd's (/run/swupdate); the client finds both
    # (control and progress) below $TMPDIR.
    result = vm.run("TMPDIR=/run/swupdate swupdate-client -v /dev/vdb", timeout=INSTALL_TIMEOUT)
    assert result.status == 0 and "SUCCESS" in result.output.upper(), result.output
    env = _env(device)
    assert (env["slot"], env["upgrade_available"], env["bootcount"]) == ("B", "1", "0")

    vm.check("sync")
    vm.power_cut()
    device.power_on()
    vm.expect(KERNEL_SLOT, BOOT_TIMEOUT)
    assert vm.last_match(1) == "B"
    vm.login()
    device.wait_online("the updated slot B")
    assert "twelvefactor.slot=B" in vm.check("cat /proc/cmdline")
    assert device.meta()["slot"] == "B"
    # twelvefactor-confirm marks the new slot good once the agent is online
    vm.wait_for("twelvefactor-bootenv get upgrade_available", "0", BOOT_TIMEOUT)
    assert _env(device)["bootcount"] == "0"
