"""Power cuts anywhere in an update's download and install never brick the
device. This runs on the boot tier's first device, after test_device.py
(scripts/test runs the other update tests on a device of their own, beside
it, so that the two QEMU sessions take about as long).
"""

from __future__ import annotations

import random
from pathlib import Path

from testbed.boot.device import Device
from testbed.boot.updating import (
    Updating,
    build_update,
    job_limit,
    running_slot,
    version,
)

LINK_RATE = "32mbit"
LINK_SECONDS = 60.0  # the .swu (about 180 MB) at LINK_RATE, with room


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
    # 0-49 % is SWUpdate's dry run, which writes nothing). The download's points
    # stay below 60 %: a cut is made when a report shows the point passed, a few
    # per cent late, and the download resumes where the disk has it; with the
    # points to 95 % a resumed download ended before the next one was reported.
    points = [("downloading", t) for t in sorted(rng.sample(range(5, 60), 5))]
    points += [("installing", t) for t in sorted(rng.sample(range(55, 95), 3))]
    # A link of 32 Mbit/s, as a device in the field may have: the download takes
    # about 45 s, so every 5 % step is reported for long enough to be seen and
    # cut at (at full speed, resumed near the end, it ended between two looks).
    device.hub.underlay.limit_rate(LINK_RATE)
    try:
        for state, threshold in points:
            e = up.wait(
                lambda e, s=state, t=threshold: e["state"] == s and (e.get("percent") or 0) >= t,
                f"{state} at {threshold} %",
                job_limit(boots=1, link=LINK_SECONDS),
            )
            cuts.append((state, int(e.get("percent") or 0)))
            vm.power_cut()
            up.power_on()
            device.wait_online(f"power cut while {state} ({threshold} %)")
            assert running_slot(device) == old  # a half-written slot is never selected
        entry = up.wait_final(job_limit(boots=1, link=LINK_SECONDS))
    finally:
        device.hub.underlay.limit_rate(None)
    assert entry["state"] == "succeeded", (entry, cuts, up.states)
    assert len(cuts) == 8, cuts
    device.wait_online("after the update with 8 power cuts")
    assert running_slot(device) != old
    assert version(device) == "1.3"
