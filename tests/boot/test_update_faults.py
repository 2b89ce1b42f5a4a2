"""Update faults: a new slot that never confirms rolls back within the boot
limit, and power cuts anywhere in the download and the install never brick
the device. They run on the boot tier's first device, after test_device.py
(scripts/test runs the other update tests on a device of their own).
"""

from __future__ import annotations

import random
from pathlib import Path

from testbed.boot.device import Device
from testbed.boot.updating import (
    BOOTLIMIT,
    Updating,
    build_update,
    job_limit,
    running_slot,
    version,
)


def test_broken_update_rolls_back_within_the_boot_limit(
    updating_device: Device, boot_image: Path
) -> None:
    device = updating_device
    old = running_slot(device)
    before = version(device)
    up = Updating(device, build_update(boot_image, "broken", "1.2"))
    entry = up.wait_final(job_limit(boots=BOOTLIMIT + 1, windows=BOOTLIMIT))
    assert entry["state"] == "rolled_back", (entry, up.states)
    assert "did not confirm" in str(entry["reason"]), entry
    new = "B" if old == "A" else "A"
    # every boot of the new slot failed to confirm, then GRUB went back
    assert up.boots == [new] * BOOTLIMIT + [old], up.boots
    device.wait_online("after the rollback")
    assert running_slot(device) == old
    assert device.meta()["slot"] == old and version(device) == before


def test_power_cuts_during_download_and_install_never_brick(
    updating_device: Device, boot_image: Path
) -> None:
    device = updating_device
    vm = device.vm
    old = running_slot(device)
    rng = random.Random(20261126)
    up = Updating(device, build_update(boot_image, "good", "1.3"))
    cuts: list[tuple[str, int]] = []
    # 5 random points of the download, then 3 of the install proper (50-99 %:
    # 0-49 % is SWUpdate's dry run, which writes nothing)
    points = [("downloading", t) for t in sorted(rng.sample(range(5, 95), 5))]
    points += [("installing", t) for t in sorted(rng.sample(range(55, 95), 3))]
    for state, threshold in points:
        e = up.wait(
            lambda e, s=state, t=threshold: e["state"] == s and (e.get("percent") or 0) >= t,
            f"{state} at {threshold} %",
            job_limit(boots=1),
        )
        cuts.append((state, int(e.get("percent") or 0)))
        vm.power_cut()
        up.power_on()
        device.wait_online(f"power cut while {state} ({threshold} %)")
        assert running_slot(device) == old  # a half-written slot is never selected
    entry = up.wait_final(job_limit(boots=1))
    assert entry["state"] == "succeeded", (entry, cuts, up.states)
    assert len(cuts) == 8, cuts
    device.wait_online("after the update with 8 power cuts")
    assert running_slot(device) != old
    assert version(device) == "1.3"
