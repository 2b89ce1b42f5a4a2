"""Updates the device refuses, and provisioning that allows older versions: other
hardware, unsigned, tampered and older updates are each refused before a byte of the
idle slot is written, with the reason reported; a rollout whose first phase fails
never reaches its second.

None of these installs anything, so they need no device of their own: scripts/test
runs them on the metered session's device (test_metered_device.py, after the host
tiers), which leaves the update tests' session (test_update_delta.py, test_update.py)
the jobs that install. Machinery: testbed/boot/updating.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from twelvefactor_agent.update.decide import version_key

from testbed.boot.device import Device
from testbed.boot.updating import (
    Updating,
    build_update,
    job_limit,
    partition_digest,
    running_slot,
    version,
)

# Older than any image the tests boot (DISTRO_VERSION 1.0 and the updates to
# 1.1-1.3), so the refusals below do not depend on what an earlier test installed.
OLDER = "0.9"


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
