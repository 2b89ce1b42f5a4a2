"""An update end to end on the device, in both directions with one file: the
signed .swu (refimage/updates.py, kind "good": the image under test's root
file system with a new os-release version, the layer's sw-description and
signing key) is installed by the device's own SWUpdate (the layer's start-up
arguments: the selection for the slot not running, the trusted certificate),
then the device boots the new slot, comes back online with the new version
and confirms it. First from A into B, then the same file from B into A.

The .swu holds one ext4 image, so after the first install both slots carry
the same file-system label: GRUB must find a slot by its partition, not by
its label. The .swu reaches the device as a read-only virtio disk: the serial
console is too slow for 190 MB, and the device's network reaches nothing but
the hub.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from bootdevice import ROOT, Device
from bootvm import BOOT_TIMEOUT, KERNEL_SLOT

from refimage import disk, updates

INSTALL_TIMEOUT = 900.0  # gunzip + raw write of the root file system under TCG
VERSION = "1.1"
SELECTION = {"A": "stable,copy1", "B": "stable,copy2"}  # the selection that writes a slot


@pytest.fixture(scope="module")
def update_file(boot_image: Path) -> Path:
    return updates.build(
        ROOT, boot_image, ROOT / "build" / "refimage", kind="good", version=VERSION
    )


def _env(device: Device) -> dict[str, str]:
    out = device.vm.check("twelvefactor-bootenv get")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _label(image: Path, partition: str) -> str:
    """The ext4 volume name of a partition, read from the host (debugfs stats)."""
    offset, _ = disk.read_table(image)[partition]
    stats = subprocess.run(
        ["debugfs", "-R", "stats", f"{image}?offset={offset}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in stats.splitlines():
        if line.startswith("Filesystem volume name:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no volume name for {partition}: {stats[:500]}")


def _install_and_boot(device: Device, update_file: Path, running: str, target: str) -> None:
    vm = device.vm
    vm.check("sync")
    vm.power_cut()
    vm.extra_drives = [update_file]
    try:
        device.boot(f"before the update ({running})")
    finally:
        vm.extra_drives = []
    assert f"twelvefactor.slot={running}" in vm.check("cat /proc/cmdline")
    assert vm.check("twelvefactor-swupdate-selection") == SELECTION[target]
    # SWUpdate's daemon, as the layer starts it (20-twelvefactor: the selection for
    # the slot not running, the trusted certificate), installs what the client hands it.
    # The daemon's sockets are systemd's (/run/swupdate); the client finds both
    # (control and progress) below $TMPDIR.
    result = vm.run("TMPDIR=/run/swupdate swupdate-client -v /dev/vdb", timeout=INSTALL_TIMEOUT)
    if result.status != 0 or "SUCCESS" not in result.output.upper():
        journal = vm.run("journalctl -b -u swupdate -u swupdate.socket --no-pager | tail -60")
        pytest.fail(f"{result.output}\nSWUpdate's journal:\n{journal.output}", pytrace=False)
    env = _env(device)
    assert (env["slot"], env["upgrade_available"], env["bootcount"]) == (target, "1", "0")

    vm.check("sync")
    vm.power_cut()
    # one image in both slots: the labels match, so only the partition tells them apart
    assert _label(vm.disk, "rootfs-a") == _label(vm.disk, "rootfs-b")
    device.power_on()
    vm.expect(KERNEL_SLOT, BOOT_TIMEOUT)
    assert vm.last_match(1) == target
    vm.login()
    device.wait_online(f"the updated slot {target}")
    assert f"twelvefactor.slot={target}" in vm.check("cat /proc/cmdline")
    # the root file system is the update's, whichever copy GRUB took the kernel from
    assert vm.check('(. /etc/os-release && echo "$VERSION_ID")') == VERSION
    meta = device.meta()
    assert meta["slot"] == target
    assert meta["os"]["version"] == VERSION
    # twelvefactor-confirm marks the new slot good once the agent is online
    vm.wait_for("twelvefactor-bootenv get upgrade_available", "0", BOOT_TIMEOUT)
    assert _env(device)["bootcount"] == "0"


def test_swu_installs_into_slot_b_and_boots(device: Device, update_file: Path) -> None:
    assert device.meta()["slot"] == "A"
    _install_and_boot(device, update_file, "A", "B")


def test_the_same_swu_installs_back_into_slot_a(device: Device, update_file: Path) -> None:
    if device.meta()["slot"] != "B":
        pytest.fail("runs after the install into B (the device is not on slot B)", pytrace=False)
    _install_and_boot(device, update_file, "B", "A")
