"""Firmware updates end to end, driven by the management service: a good one
across a link cut, the refusals (other hardware, unsigned, tampered, older),
a new slot that never confirms and rolls back within the boot limit, and
provisioning that allows older versions.

The device's agent decides, downloads over HTTPS inside the tunnel (resuming
with Range), has SWUpdate check the file (dry run) and install it into the
idle slot, asks for the reboot, and reports until the new slot confirmed
itself. The power cuts are in test_update_power_cuts.py; the machinery is
testbed/boot/updating.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from twelvefactor_agent.update.decide import version_key

from testbed.boot.device import Device
from testbed.boot.updating import (
    BOOTLIMIT,
    DELTA_TARGET,
    Updating,
    build_delta_update,
    build_update,
    job_limit,
    partition_digest,
    running_slot,
    version,
)

# Older than any image the tests boot (DISTRO_VERSION 1.0 and the updates to
# 1.1-1.3), so the refusals below do not depend on what an earlier test installed.
OLDER = "0.9"


def test_good_update_survives_a_link_cut_and_switches_slots(
    updating_device: Device, boot_image: Path
) -> None:
    """Download only, then the go: the job holds after its download (across an agent
    restart) and installs when the operator releases it."""
    device = updating_device
    before = running_slot(device)
    swu = build_update(boot_image, "good", "1.1")
    up = Updating(device, swu, download_only=True)
    # Cut the tunnel in the middle of the download, then bring it back.
    up.wait(
        lambda e: e["state"] == "downloading" and (e.get("percent") or 0) >= 20,
        "20 %",
        job_limit(boots=0),
    )
    device.hub.set_link(False)
    try:
        time.sleep(45)  # longer than the download's 30 s read timeout
        device.vm.drain()
    finally:
        device.hub.set_link(True)
    up.wait(lambda e: e["state"] == "downloaded", "the held download", job_limit(boots=0))
    # The hold is on /data: a restarted agent holds again and installs nothing.
    vm = device.vm
    held = f"update job {up.job}: downloaded; the install waits for the go"

    def held_notes() -> int:
        grep = f"journalctl -b -u twelvefactor-agent --no-pager | grep -c -F '{held}'"
        return int(vm.run(grep).output.strip() or 0)

    assert held_notes() == 1
    vm.check("systemctl restart twelvefactor-agent")
    deadline = time.monotonic() + job_limit(boots=0)
    while held_notes() < 2:
        assert time.monotonic() < deadline, "the restarted agent did not hold the job again"
        time.sleep(1)
    assert up.state()["state"] == "downloaded"
    assert vm.check("twelvefactor-bootenv get upgrade_available") == "0"
    assert running_slot(device) == before
    status, released = device.hub.management_send("POST", f"/jobs/{up.job}/install")
    assert status == 200 and released["changed"] == [device.device_id], released
    entry = up.wait_final(job_limit(boots=1))
    assert entry["state"] == "succeeded", (entry, up.states)
    starts = up.ranged_requests()
    assert starts and min(starts) > 0, f"no Range request after the cut: {starts}"
    # the artifact server counted what it sent for the job: the file, and whatever was
    # in flight when the link was cut
    assert entry["sent_bytes"] >= swu.stat().st_size, entry
    after = running_slot(device)
    assert after != before and up.boots[-1] == after
    device.wait_online("after the update")
    assert device.meta()["slot"] == after
    assert version(device) == "1.1"
    # The new slot confirmed itself: no update pending in the boot environment, and
    # SWUpdate's "installed" marker cleared with it (the next update starts clean).
    assert device.vm.check("twelvefactor-bootenv get upgrade_available") == "0"
    ustate = device.vm.run("twelvefactor-bootenv get ustate").output.strip()
    assert ustate in ("0", "bootenv: ustate is not set"), ustate
    changes = [(a, b) for a, b in up.transitions() if a != b]
    assert changes == [
        ("queued", "downloading"),
        ("downloading", "downloaded"),
        ("downloaded", "installing"),
        ("installing", "rebooting"),
        ("rebooting", "verifying"),
        ("verifying", "succeeded"),
    ], changes


@pytest.mark.parametrize(
    ("kind", "version", "reason"),
    [
        # one version for the three: the kinds share one root file system
        ("other-hw", "1.4", "wrong_hardware"),
        ("unsigned", "1.4", "swupdate_refused"),
        ("tampered", "1.4", "swupdate_refused"),
    ],
)
def test_bad_update_is_refused_before_the_idle_slot_is_touched(
    updating_device: Device, boot_image: Path, kind: str, version: str, reason: str
) -> None:
    _refused(updating_device, build_update(boot_image, kind, version), reason)


def _refused(device: Device, swu: Path, reason: str) -> None:
    running = running_slot(device)
    idle = "B" if running == "A" else "A"
    idle_before = partition_digest(device.vm.disk, idle)
    up = Updating(device, swu)
    entry = up.wait_final(job_limit(boots=0))
    assert entry["state"] == "failed", (entry, up.states)
    assert str(entry["reason"]).startswith(reason), entry
    assert up.boots == [], "the device rebooted"
    assert running_slot(device) == running
    assert partition_digest(device.vm.disk, idle) == idle_before, "the idle slot was written"
    assert device.vm.check("twelvefactor-bootenv get upgrade_available") == "0"


def test_a_rollout_whose_first_phase_fails_never_reaches_the_second(
    updating_device: Device, boot_image: Path
) -> None:
    """Issue 12: the QEMU device is phase 1 and refuses the release (another board's); the
    rollout pauses itself and phase 2's device is never sent a job."""
    device, hub = updating_device, updating_device.hub
    running = running_slot(device)
    artifact = hub.add_artifact(build_update(boot_image, "other-hw", "1.4"))
    later = "boot-dev-later"  # sorted after the QEMU device: phase 2
    assert device.device_id < later
    made = hub.api.call(
        "POST",
        "/rollouts",
        {
            "artifact": artifact["sha256"],
            "devices": [later, device.device_id],
            "phases": [{"count": 1}, {"percent": 100}],
            "error_percent": 50,
            "error_min": 1,
        },
    )
    deadline = time.monotonic() + job_limit(boots=0)
    rollout = made
    while rollout["state"] != "paused" and time.monotonic() < deadline:
        time.sleep(1)
        rollout = hub.api.get(f"/rollouts/{made['id']}")
    assert rollout["state"] == "paused", rollout
    assert rollout["reason"] == "error threshold 50% reached (1 of 1)"
    first, second = sorted(rollout["devices"], key=lambda d: d["phase"])
    assert first["device"] == device.device_id and first["state"] == "failed"
    assert str(first["reason"]).startswith("wrong_hardware"), first
    assert second == {**second, "device": later, "job": None, "state": "waiting"}
    assert running_slot(device) == running
    hub.api.call("POST", f"/rollouts/{made['id']}/cancel")  # nothing more is sent


def test_broken_update_rolls_back_within_the_boot_limit(
    updating_device: Device, boot_image: Path
) -> None:
    """By delta (issue 14): the device's SWUpdate builds the new slot from the running one
    and the chunks it lacks; the slot boots, never confirms, and GRUB goes back."""
    device = updating_device
    old = running_slot(device)
    before = version(device)
    full = build_update(boot_image, "broken", "1.2")
    size = full.stat().st_size  # read now: the cache is shared with the other sessions
    delta = build_delta_update(full, device.hub.artifact_url)
    up = Updating(device, full, delta=delta)
    entry = up.wait_final(job_limit(boots=BOOTLIMIT + 1, windows=BOOTLIMIT, delta=1))
    assert entry["state"] == "rolled_back", (entry, up.states)
    assert "did not confirm" in str(entry["reason"]), entry
    assert entry["path"] == "delta" and entry["fallback"] is None, entry
    moved = entry["sent_bytes"]  # the delta .swu (the agent) and the chunks (SWUpdate)
    ratio = moved / size
    print(f"\ndelta update: {moved} B sent, the full .swu {size} B ({ratio:.4f})")
    assert ratio <= DELTA_TARGET, (moved, size)
    new = "B" if old == "A" else "A"
    # every boot of the new slot failed to confirm, then GRUB went back
    assert up.boots == [new] * BOOTLIMIT + [old], up.boots
    device.wait_online("after the rollback")
    assert running_slot(device) == old
    assert device.meta()["slot"] == old and version(device) == before


def _older_than_running(device: Device) -> str:
    running = version(device)
    # the agent's own rule for which version is older
    assert version_key(OLDER) < version_key(running), running
    return OLDER


def test_older_version_is_refused(updating_device: Device, boot_image: Path) -> None:
    older = _older_than_running(updating_device)
    _refused(updating_device, build_update(boot_image, "good", older), "downgrade")


def test_provisioning_may_allow_older_versions(updating_device: Device, boot_image: Path) -> None:
    """`[update] allow_downgrade = true` in the device's file opens the version gate.

    The offered older version is tampered, so SWUpdate's dry run is what refuses it:
    the job got past the agent's version check, and nothing is installed.
    """
    device = updating_device
    conf = "/data/config/agent.toml"
    older = _older_than_running(device)
    device.vm.check(f"cp {conf} /run/agent.toml.orig")
    try:
        device.vm.check(
            f"sed -i 's/^allow_downgrade = false/allow_downgrade = true/' {conf} && sync"
            f" && grep -q '^allow_downgrade = true' {conf}"
        )
        device.restart_agent()
        _refused(device, build_update(boot_image, "tampered", older), "swupdate_refused")
    finally:
        device.vm.check(f"cp /run/agent.toml.orig {conf} && sync")
        device.restart_agent()
