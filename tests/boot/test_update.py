"""Firmware updates end to end, driven by the management service: a new slot
that never confirms and rolls back within the boot limit. A good one across a
link cut, a held install and power cuts is in test_update_power_cuts.py; the
refusals (other hardware, unsigned, tampered, older) are in
test_update_refusals.py.

The device's agent decides, downloads over HTTPS inside the tunnel (resuming
with Range), has SWUpdate check the file (dry run) and install it into the
idle slot, asks for the reboot, and reports until the new slot confirmed
itself. The machinery is testbed/boot/updating.py.
"""

from __future__ import annotations

import base64
from pathlib import Path

from testbed.boot.device import Device
from testbed.boot.updating import (
    BOOTLIMIT,
    DELTA_TARGET,
    SLOT_PARTITION,
    Updating,
    build_delta_update,
    build_update,
    job_limit,
    partition_digest,
    root_image_digest,
    running_slot,
    version,
)


def test_broken_update_rolls_back_within_the_boot_limit(
    updating_device: Device, boot_image: Path
) -> None:
    """By delta (issue 14): the device's SWUpdate builds the new slot from the running one
    and the chunks it lacks; the slot boots, never confirms, and GRUB goes back.

    The running slot was modified first (a block of one of its files overwritten on the
    partition, as a device tampered with in the field): the delta handler fetches the
    chunks the running slot no longer holds and the slot it writes is still the signed
    image, byte for byte, so a modified source needs no fallback (docs/updates.md)."""
    device = updating_device
    old = running_slot(device)
    before = version(device)
    full = build_update(boot_image, "broken", "1.2")
    size = full.stat().st_size  # read now: the cache is shared with the other sessions
    signed = root_image_digest(full)
    delta = build_delta_update(full, device.hub.artifact_url)
    _spoil_a_block_of_the_running_slot(device, old)
    up = Updating(device, full, delta=delta)
    new = "B" if old == "A" else "A"
    up.wait(
        lambda e: e["state"] == "rebooting",
        "the reboot into the new slot",
        job_limit(boots=0, delta=1),
    )
    # SWUpdate synced the slot before it returned; the slot has not been booted yet
    assert partition_digest(device.vm.disk, new, signed[1]) == signed[0]
    entry = up.wait_final(job_limit(boots=BOOTLIMIT + 1, windows=BOOTLIMIT))
    assert entry["state"] == "rolled_back", (entry, up.states)
    assert "did not confirm" in str(entry["reason"]), entry
    assert entry["path"] == "delta" and entry["fallback"] is None, entry
    moved = entry["sent_bytes"]  # the delta .swu (the agent) and the chunks (SWUpdate)
    ratio = moved / size
    print(
        f"\ndelta update from a modified slot: {moved} B sent, the full .swu {size} B ({ratio:.4f})"
    )
    assert ratio <= DELTA_TARGET, (moved, size)
    # every boot of the new slot failed to confirm, then GRUB went back
    assert up.boots == [new] * BOOTLIMIT + [old], up.boots
    device.wait_online("after the rollback")
    assert running_slot(device) == old
    assert device.meta()["slot"] == old and version(device) == before


# The running slot's largest data file under /usr/share (none the device reads at run
# time: time zones and CA bundles left out) has its first block overwritten with random
# bytes on the slot's partition (argv[1]); FIBMAP gives the block (Python is on every
# image). Prints the file, the block and the new bytes' sha256.
SPOIL = """
import fcntl, hashlib, os, struct, sys
skip = ("/usr/share/zoneinfo", "/usr/share/ca-certificates")
files = [os.path.join(d, f) for d, _, fs in os.walk("/usr/share") for f in fs
         if not d.startswith(skip)]
path = max((f for f in files if os.path.isfile(f) and not os.path.islink(f)),
           key=os.path.getsize)
with open(path, "rb") as f:
    block = struct.unpack("i", fcntl.ioctl(f, 1, struct.pack("i", 0)))[0]
size = os.statvfs("/").f_frsize
noise = os.urandom(size)
with open(sys.argv[1], "r+b") as d:
    d.seek(block * size)
    d.write(noise)
    os.fsync(d.fileno())
print(path, block, size, hashlib.sha256(noise).hexdigest())
"""


def _spoil_a_block_of_the_running_slot(device: Device, slot: str) -> None:
    vm = device.vm
    partition = f"/dev/disk/by-partlabel/{SLOT_PARTITION[slot]}"
    # one line on the serial console, decoded by the device's Python: the layer's
    # busybox has no base64 applet
    script = base64.b64encode(SPOIL.encode()).decode()
    run = f"python3 -c 'import base64; exec(base64.b64decode(\"{script}\"))' {partition}"
    path, block, size, digest = vm.check(run).split()
    assert int(block) > 0, (path, block)
    # the partition holds the new bytes (a write to a mounted slot was not refused)
    read = f"dd if={partition} bs={size} skip={block} count=1 status=none | sha256sum"
    assert vm.check(read).split()[0] == digest, (path, block)
