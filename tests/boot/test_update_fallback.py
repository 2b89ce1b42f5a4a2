"""A/B fallback: slot B holds a kernel that boots but no working root file
system, and is selected as a fresh update would select it (slot=B,
upgrade_available=1, bootcount=0). GRUB must try B bootlimit times, counting
each attempt in its environment, then fall back to A, where the device comes
back online and reports the slot it runs from.

Slot B is written from the host between boots, like a power cut during an
update would leave it: an ext4 file system labelled rootfs-b holding only
/boot (kernel and initramfs copied from rootfs-a), so the kernel starts and
then finds no init, and reboots (panic=5 on the layer's command line).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from bootdevice import Device
from bootvm import BOOT_TIMEOUT, KERNEL_SLOT

from refimage import disk, grub, partfs

BOOTLIMIT = 3  # the layer's grub.cfg default, also in the initial grubenv


def _break_slot_b(image: Path) -> None:
    offset, size = disk.read_table(image)["rootfs-b"]
    with tempfile.TemporaryDirectory(prefix="broken-b-") as tmp:
        tree = Path(tmp) / "tree"
        partfs.dump_tree(image, "rootfs-a", "/boot", tree)
        fs = Path(tmp) / "b.ext4"
        disk.make_ext4(tree, fs, "rootfs-b", size, Path(tmp) / "mkfs.log")
        disk.write_into(image, fs, offset, size)


def _env(device: Device) -> dict[str, str]:
    out = device.vm.check("twelvefactor-bootenv get")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_broken_slot_b_falls_back_to_a(device: Device) -> None:
    vm = device.vm
    vm.check("twelvefactor-bootenv set slot=B upgrade_available=1 bootcount=0 && sync")
    env = _env(device)
    assert (env["slot"], env["upgrade_available"], env["bootcount"]) == ("B", "1", "0")
    assert env.get("bootlimit", str(BOOTLIMIT)) == str(BOOTLIMIT)
    vm.power_cut()
    _break_slot_b(vm.disk)

    for attempt in range(1, BOOTLIMIT + 1):
        device.power_on()
        vm.expect(KERNEL_SLOT, BOOT_TIMEOUT)
        slot = vm.last_match(1)
        assert slot == "B", f"attempt {attempt}: GRUB booted slot {slot}, expected B"
        # no init on B: the kernel (or the initramfs) reboots, and QEMU exits
        vm.wait_power_off(BOOT_TIMEOUT)
        # GRUB counted the attempt in the environment block on the ESP
        env = grub.parse_env_block(partfs.read_fat(vm.disk, "esp", "/grub/grubenv"))
        assert (env["slot"], env["upgrade_available"], env["bootcount"]) == (
            "B",
            "1",
            str(attempt),
        ), f"after attempt {attempt}: {env}"

    device.power_on()
    vm.expect(KERNEL_SLOT, BOOT_TIMEOUT)
    assert vm.last_match(1) == "A", "GRUB did not fall back to slot A after the limit"
    vm.login()
    device.wait_online(f"fallback to A after {BOOTLIMIT} failed boots of B")

    assert re.search(r"twelvefactor\.slot=A", vm.check("cat /proc/cmdline"))
    env = _env(device)
    assert (env["slot"], env["upgrade_available"], env["bootcount"]) == ("A", "0", "0")
    assert env["rollback"] == "B", "GRUB records the slot it fell back from"
    meta = device.meta()
    assert meta["slot"] == "A"
    # what the bootloader environment says, as the agent read it
    assert meta["boot"] is not None, "the agent reports no boot environment (can it read it?)"
    assert meta["boot"]["slot"] == "A"
    assert meta["boot"]["upgrade_available"] is False
    # the failed attempt, as the agent reports it to the management service
    assert meta["boot"]["rollback"] == "B"
