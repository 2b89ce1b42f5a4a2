"""A delta whose chunks are not what its signed header says (issue 14): the device's
SWUpdate refuses them, nothing is activated, and the agent installs the full .swu.

The update is the reference builder's `good` kind (the image with os-release
changed), made into a delta by the artifact tool (`build_delta_update`) for the
hub's artifact address; its `.zck` is altered on the hub after it was stored
(a byte in every 4 KiB past the header: whatever chunks the device asks for are
not what the signed header says). A clean delta installs in
test_update.py::test_broken_update_rolls_back_within_the_boot_limit (delivered
by delta, measured there against the full `.swu`). Machinery:
testbed/boot/updating.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twelvefactor_services.artifact.zchunk import LEAD_MAX, header_length

from testbed.boot.device import Device
from testbed.boot.updating import (
    Updating,
    build_delta_update,
    build_update,
    job_limit,
    running_slot,
    version,
)

RELEASE = "2.1"  # newer than every version the session's other update tests install


def _tamper(zck: Path) -> None:
    """Flip a byte in every 4 KiB of the chunks (the header intact, so the .swu's check
    of the header passes and only the chunks' own digests can tell)."""
    with zck.open("r+b") as f:
        start = header_length(f.read(LEAD_MAX))
        size = zck.stat().st_size
        for at in range(start + 100, size, 4096):
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0xFF]))


def test_a_delta_with_altered_chunks_is_refused_and_the_full_swu_installs(
    updating_device: Device, boot_image: Path
) -> None:
    device = updating_device
    first = running_slot(device)
    full = build_update(boot_image, "good", RELEASE)

    def alter(artifact: dict[str, Any]) -> None:
        _tamper(device.hub.stored(f"{artifact['delta']['zck']}.zck"))

    delta = build_delta_update(full, device.hub.artifact_url)
    up = Updating(device, full, delta=delta, before_job=alter)
    # the delta's refusal, reported as the device falls back, before the full's install
    fell = up.wait(lambda e: e["path"] == "full", "the fallback", job_limit(boots=0, delta=1))
    assert fell["fallback"], fell  # why the delta was given up, in the device's words
    assert str(fell["fallback"]).startswith(("swupdate_refused", "install_failed")), fell
    assert running_slot(device) == first and up.boots == []
    assert device.vm.check("twelvefactor-bootenv get upgrade_available") == "0"
    entry = up.wait_final(job_limit(boots=1))
    assert entry["state"] == "succeeded", (entry, up.states)
    assert (entry["path"], entry["fallback"]) == ("full", fell["fallback"]), entry
    assert running_slot(device) != first and version(device) == RELEASE
    assert entry["sent_bytes"] >= full.stat().st_size, entry
    changes = [(a, b) for a, b in up.transitions() if a != b]
    assert ("installing", "downloading") in changes, changes
