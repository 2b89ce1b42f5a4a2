"""Delta updates on the device (issue 14).

A one-package release (the reference builder's `package` kind: the agent's
version and another build of dosfstools, whose fsck.fat checks the ESP at every
boot) installs by delta from slot A into slot B through a power cut made while
the chunks come over a slow link and SWUpdate writes the idle slot (its journal
says what it will fetch and not that it has; the kernel counts sectors written to
the slot): the old slot boots, the install starts again, and the new slot
confirms, with the bytes moved against the full `.swu` printed and held to
RAUC's figure for one package (10 %: they include the chunks fetched before the
cut). Then the way back: the next one-package release by delta from that slot
into the first one, through a power cut at another point of the install (SWUpdate
has begun it, after its dry run, and the handler has fetched no chunk yet: it is
reading the running slot for the chunks it holds), and the device confirms it.
test_update.py's broken update, which runs after this file in the same session,
goes by delta once more (its slot boots three times but never confirms, by design).

Then a delta whose chunks are not what its signed header says: the device's
SWUpdate refuses them, nothing is activated, and the agent installs the full
.swu. That update is the `good` kind (os-release changed), made into a delta
by the artifact tool (`build_delta_update`) for the hub's artifact address; its
`.zck` is altered on the hub after it was stored (a byte in every 4 KiB past the
header: whatever chunks the device asks for are not what the signed header
says). Machinery: testbed/boot/updating.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twelvefactor_services.artifact.zchunk import LEAD_MAX, header_length

from refimage import updates
from testbed.boot.device import Device
from testbed.boot.updating import (
    DELTA_TARGET,
    SLOT_PARTITION,
    Updating,
    build_delta_update,
    build_update,
    job_limit,
    package_probe_sha256,
    running_slot,
    version,
)

# scripts/test runs this file first on its session's device (slot A, version 1.0),
# then test_update.py, whose updates (1.1 to 1.3) must be newer than these
PACKAGE_RELEASE = "1.0.1"
NEXT_RELEASE = "1.0.2"
RELEASE = "1.0.3"
ESP_FSCK = "systemd-fsck@dev-disk-by\\x2dpartlabel-esp.service"  # boot.mount Wants it
# What SWUpdate's delta handler says as it goes (handlers/delta_handler.c), and the
# link's rate for the chunks (about 8 KB/s: the cut lands seconds into them)
STARTED, FETCHING, FETCHED = (
    "Software Update started",
    "Total bytes to be downloaded",
    "Total downloaded data",
)
SWUPDATE_SAYS = "|".join((STARTED, FETCHING, FETCHED))
SLOW_LINK = "64kbit"


def test_a_one_package_release_installs_by_delta_through_a_power_cut_and_confirms(
    updating_device: Device, boot_image: Path
) -> None:
    device = updating_device
    vm = device.vm
    old = running_slot(device)
    agent = str(device.meta()["agent_version"]).split("+")[0]
    probe = package_probe_sha256()
    assert vm.check(f"sha256sum {updates.PACKAGE_PROBE}").split()[0] != probe
    full = build_update(boot_image, "package", PACKAGE_RELEASE)
    size = full.stat().st_size  # read now: the cache is shared with the other sessions
    idle = "B" if old == "A" else "A"
    written = _sectors_written(device, idle)
    up = Updating(device, full, delta=build_delta_update(full, device.hub.artifact_url))
    # The cut: while the chunks come (on a slow link from the moment the install starts:
    # they would take minutes) and SWUpdate writes the idle slot, in one: the handler
    # writes the new slot in order, from the running one and the chunks as they come.
    said = _install_started(up)
    assert not any(FETCHING in line for line in said), said
    device.hub.underlay.limit_rate(SLOW_LINK)
    try:
        said = up.wait_swupdate(
            SWUPDATE_SAYS,
            lambda lines: any(FETCHING in line for line in lines),
            "the chunks' fetch",
            job_limit(boots=0, delta=1),
        )
        deadline = time.monotonic() + job_limit(boots=0)
        while _sectors_written(device, idle) == written:  # the slot's write has begun
            assert time.monotonic() < deadline, "SWUpdate wrote nothing to the idle slot"
            time.sleep(0.5)
        said = up.wait_swupdate(SWUPDATE_SAYS, lambda _: True, "", job_limit(boots=0))
        vm.power_cut()
    finally:
        device.hub.underlay.limit_rate(None)
    assert not any(FETCHED in line for line in said), said  # the cut came before the end
    up.power_on()
    device.wait_online("power cut while fetching the chunks and writing the slot")
    assert running_slot(device) == old  # a half-written slot is never selected
    entry = up.wait_final(job_limit(boots=1, delta=1))
    assert entry["state"] == "succeeded", (entry, up.states)
    assert (entry["path"], entry["fallback"]) == ("delta", None), entry
    moved = entry["sent_bytes"]  # the delta .swu (the agent) and the chunks (SWUpdate)
    print(
        f"\none-package release {PACKAGE_RELEASE} by delta through a power cut,"
        f" slot {old} -> {up.boots}:"
        f" {moved} B sent, the full .swu {size} B ({moved / size:.4f})"
    )
    assert moved / size <= DELTA_TARGET, (moved, size)
    new = running_slot(device)
    assert up.boots == [old, new] and new != old, (up.boots, old)
    # the device runs the new release: its version, its agent's, its package's
    # fsck.fat, which checked the ESP at this boot (boot.mount's systemd-fsck@)
    meta = device.meta()
    assert (version(device), meta["agent_version"]) == (
        PACKAGE_RELEASE,
        f"{agent}+r{PACKAGE_RELEASE}",
    )
    assert device.vm.check(f"sha256sum {updates.PACKAGE_PROBE}").split()[0] == probe
    fsck = device.vm.check(f"systemctl show -p ActiveState -p Result '{ESP_FSCK}'")
    assert dict(p.split("=", 1) for p in fsck.split()) == {
        "ActiveState": "active",
        "Result": "success",
    }, fsck


def test_the_next_release_goes_back_by_delta_through_a_power_cut_in_the_install(
    updating_device: Device, boot_image: Path
) -> None:
    device = updating_device
    old = running_slot(device)  # where the first test left the device
    agent = str(device.meta()["agent_version"]).split("+")[0]
    full = build_update(boot_image, "package", NEXT_RELEASE)
    size = full.stat().st_size  # read now: the cache is shared with the other sessions
    up = Updating(device, full, delta=build_delta_update(full, device.hub.artifact_url))
    said = _install_started(up)
    device.vm.power_cut()
    assert not any(FETCHED in line for line in said), said  # the cut came before the end
    where = "chunks fetching" if any(FETCHING in line for line in said) else "no chunk asked"
    up.power_on()
    device.wait_online("power cut in the delta install")
    assert running_slot(device) == old  # an install begun is never selected
    entry = up.wait_final(job_limit(boots=1, delta=1))
    assert entry["state"] == "succeeded", (entry, up.states)
    assert (entry["path"], entry["fallback"]) == ("delta", None), entry
    moved = entry["sent_bytes"]
    new = running_slot(device)
    print(
        f"\nnext release {NEXT_RELEASE} by delta through a power cut in the install"
        f" ({where}), slot {old} -> {new}:"
        f" {moved} B sent, the full .swu {size} B ({moved / size:.4f})"
    )
    assert moved / size <= DELTA_TARGET, (moved, size)
    assert up.boots == [old, new] and new != old, (up.boots, old)
    meta = device.meta()
    assert (version(device), meta["agent_version"]) == (NEXT_RELEASE, f"{agent}+r{NEXT_RELEASE}")


def _install_started(up: Updating) -> list[str]:
    """Until SWUpdate has begun the install (its second start: the dry run came first);
    what its journal says by then."""
    return up.wait_swupdate(
        SWUPDATE_SAYS,
        lambda lines: sum(STARTED in line for line in lines) >= 2,
        "the install's start",
        job_limit(boots=0, delta=1),
    )


def _sectors_written(device: Device, slot: str) -> int:
    """Sectors the kernel has written to a slot's partition since this boot."""
    name = f"$(basename $(readlink -f /dev/disk/by-partlabel/{SLOT_PARTITION[slot]}))"
    return int(device.vm.check(f"cat /sys/class/block/{name}/stat").split()[6])


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
    size = full.stat().st_size  # read now: the cache is shared with the other sessions

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
    assert entry["sent_bytes"] >= size, entry
    changes = [(a, b) for a, b in up.transitions() if a != b]
    assert ("installing", "downloading") in changes, changes
