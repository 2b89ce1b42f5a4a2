"""Delta updates end to end (issue 14): the device's SWUpdate builds the idle slot from the
running one and the chunks it lacks, fetched from the management service's artifact
server inside the tunnel; anything wrong with the delta and the agent takes the full .swu.

The updates are the reference builder's `good` kind (the image with os-release
changed), each made into a delta by the artifact tool (`build_delta_update`) for the
hub's artifact address. The first job's chunks are altered on the hub after they were
stored (every 4 KiB of the .zck past its header: whatever chunks the device asks for
are not what the signed header says), so the device must refuse them and fall back;
the second is clean and goes by delta, both ways between the slots. Machinery:
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

# newer than every version the session's other update tests install (1.x)
TAMPERED, CLEAN = "2.1", "2.2"
TARGET = 0.10  # delta / full .swu, RAUC's documented figure for one package (issue 14)


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


def _delta_job(
    device: Device, boot_image: Path, release: str, *, tamper: bool = False
) -> tuple[Updating, Path]:
    full = build_update(boot_image, "good", release)
    delta = build_delta_update(full, device.hub.artifact_url)

    def alter(artifact: dict[str, Any]) -> None:
        if tamper:
            _tamper(device.hub.stored(f"{artifact['delta']['zck']}.zck"))

    return Updating(device, full, delta=delta, before_job=alter), full


def test_a_release_installs_by_delta_and_a_tampered_chunk_falls_back_to_the_full_swu(
    updating_device: Device, boot_image: Path
) -> None:
    device = updating_device
    first = running_slot(device)

    up, full = _delta_job(device, boot_image, TAMPERED, tamper=True)
    entry = up.wait_final(job_limit(boots=1))
    assert entry["state"] == "succeeded", (entry, up.states)
    assert entry["path"] == "full", entry
    assert entry["fallback"], entry  # why the delta was given up, in the device's words
    # the dry run or the install refused the altered chunks; nothing was activated
    # until the full .swu's install selected the other slot
    assert any(w in entry["fallback"] for w in ("swupdate_refused", "install_failed")), entry
    second = running_slot(device)
    assert second != first and version(device) == TAMPERED
    assert entry["sent_bytes"] >= full.stat().st_size, entry

    up, full = _delta_job(device, boot_image, CLEAN)
    entry = up.wait_final(job_limit(boots=1))
    assert entry["state"] == "succeeded", (entry, up.states)
    assert entry["path"] == "delta" and entry["fallback"] is None, entry
    assert running_slot(device) == first and version(device) == CLEAN
    device.wait_online("after the delta update")
    moved = entry["sent_bytes"]  # the delta .swu (the agent) and the chunks (SWUpdate)
    ratio = moved / full.stat().st_size
    print(
        f"\ndelta update: {moved} B sent against the full .swu's {full.stat().st_size} B"
        f" ({ratio:.4f}; target <= {TARGET})"
    )
    assert ratio <= TARGET, (moved, full.stat().st_size)
    changes = [(a, b) for a, b in up.transitions() if a != b]
    assert ("installing", "downloading") not in changes, changes
