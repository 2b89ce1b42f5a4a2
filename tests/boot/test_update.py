"""Firmware updates end to end, driven by the management service.

The hub's management service stores a signed .swu made by the reference-image
builder (refimage.updates) and publishes a job for the device; the device's
agent decides, downloads over HTTPS inside the tunnel (resuming with Range),
has SWUpdate check the file (dry run) and install it into the idle slot,
asks for the reboot, and reports until the new slot confirmed itself; or the
bootloader falls back and the agent reports `rolled_back`.

QEMU runs with -no-reboot, so every reboot the device makes ends QEMU: the
tests power it on again, the way the device's power supply would.
The tests share the device and start from whatever slot the previous one
left running, but never from its unfinished business: each first brings the
device to a known state (powered, online, no unfinished job, no trial boot),
and none depends on the version another one installed.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from refimage import disk, updates
from testbed.boot.device import ROOT, Device
from testbed.boot.pace import PACE, REFERENCE_BOOT
from testbed.boot.vm import KERNEL_SLOT, LOGIN_SECONDS, VMError

# Reference times (pace.py scales them by this run's boots): a job's download,
# SWUpdate's dry run and install took 2-4 minutes in all; a boot REFERENCE_BOOT.
JOB_SECONDS = 180.0
# A new slot's confirmation window covers its boot to online (the layer's default
# is 180 s); it is a device-side setting, so it follows this run's pace too.
CONFIRM_SECONDS = 60.0
BOOTLIMIT = 3
FINAL = ("succeeded", "failed", "rolled_back")
SLOT_PARTITION = {"A": "rootfs-a", "B": "rootfs-b"}


def _build(boot_image: Path, kind: str, version: str) -> Path:
    return updates.build(ROOT, boot_image, ROOT / "build" / "refimage", kind=kind, version=version)


def _running_slot(device: Device) -> str:
    return device.vm.check("twelvefactor-bootenv slot")


def job_limit(boots: int, windows: int = 0) -> float:
    """Seconds for a job that reboots `boots` times, `windows` of them waiting
    out the confirmation window (a slot that never confirms)."""
    window = PACE.window(CONFIRM_SECONDS)
    return PACE.limit(JOB_SECONDS + boots * REFERENCE_BOOT, windows * window)


def _partition_digest(image: Path, slot: str) -> str:
    """sha256 of a slot's partition, read from the host side of the disk image."""
    offset, size = disk.read_table(image)[SLOT_PARTITION[slot]]
    h = hashlib.sha256()
    with image.open("rb") as f:
        f.seek(offset)
        left = size
        while left > 0:
            block = f.read(min(left, 4 << 20))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


class Updating:
    """One job on the device, watched from the management service; reboots power-cycled."""

    def __init__(self, device: Device, swu: Path | None = None, *, job: str = "") -> None:
        """A new job for `swu`, or (`job`) one that exists already."""
        self.device = device
        self.hub = device.hub
        if swu is not None:
            artifact = self.hub.add_artifact(swu)
            self.sha256 = str(artifact["sha256"])
            self.job = self.hub.create_job(self.sha256, device.device_id)
        else:
            self.job = job
            self.sha256 = str(self.hub.management_get(f"/jobs/{job}")[1].get("artifact", ""))
        self.boots: list[str] = []  # the slot of every boot since the job started
        self.powered_on = 0.0  # wall clock of the last power-on by this object
        self.states: list[tuple[str, Any]] = []

    def state(self) -> dict[str, Any]:
        entry = self.hub.job_state(self.job, self.device.device_id)
        seen = (entry["state"], entry.get("percent"))
        if not self.states or self.states[-1] != seen:
            self.states.append(seen)
        return entry

    def keep_powered(self) -> None:
        """Read the console; when the device rebooted (QEMU exited), power it on again."""
        vm = self.device.vm
        if vm.running and vm.drain():
            return
        self.power_on()

    def power_on(self) -> None:
        vm = self.device.vm
        self.powered_on = time.time()
        self.device.power_on()
        vm.expect(KERNEL_SLOT, PACE.limit(LOGIN_SECONDS))
        self.boots.append(vm.last_match(1))
        vm.login()

    def wait(
        self,
        done: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float,
        *,
        final_ok: bool = False,
    ) -> dict[str, Any]:
        """Until `done(state)` holds for a report made since the last power-on."""
        deadline = time.monotonic() + timeout
        entry: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.keep_powered()
            entry = self.state()
            if float(entry.get("updated") or 0) > self.powered_on and done(entry):
                return entry
            if entry["state"] in FINAL and not final_ok:
                raise VMError(f"job {self.job} ended {entry} waiting for {what}; {self.states}")
            time.sleep(1)
        raise VMError(f"job {self.job}: no {what} in {timeout:.0f} s; last {entry}; {self.states}")

    def wait_final(self, timeout: float) -> dict[str, Any]:
        return self.wait(lambda e: e["state"] in FINAL, "a final state", timeout, final_ok=True)

    def transitions(self) -> list[tuple[str, str]]:
        """The job's state changes the management service recorded, in order."""
        pattern = re.compile(rf"job {self.job} (\w+) -> (\w+)$", re.M)
        return [(m.group(1), m.group(2)) for m in pattern.finditer(self.hub.service_logs())]

    def ranged_requests(self) -> list[int]:
        """Start offsets of the artifact server's 206 answers to this device for this file."""
        pattern = re.compile(
            rf"206 {self.sha256[:12]} from {re.escape(self.device.device_id)} \((\d+)\)"
        )
        return [int(m.group(1)) for m in pattern.finditer(self.hub.service_logs())]


def _unfinished_jobs(device: Device) -> list[str]:
    status, jobs = device.hub.management_get("/jobs")
    assert status == 200, jobs
    return [
        job["id"]
        for job in jobs
        for entry in job["devices"]
        if entry["device"] == device.device_id and entry["state"] not in FINAL
    ]


def settle(device: Device) -> None:
    """Bring the shared device to a known state: powered and logged in, its
    confirmation window set, no unfinished job (one a failed test left is
    driven to its end, the device powered on at every reboot), not in a trial
    boot, and this boot's session online at the management service."""
    vm = device.vm
    if not vm.running:
        device.power_on()
        vm.login()
    window = PACE.window(CONFIRM_SECONDS)
    vm.check(f"echo TWELVEFACTOR_CONFIRM_WINDOW={window} > /data/config/confirm.env && sync")
    for job in _unfinished_jobs(device):
        left = Updating(device, job=job)
        left.wait_final(job_limit(boots=BOOTLIMIT + 1, windows=BOOTLIMIT))
    vm.wait_for(
        "twelvefactor-bootenv get upgrade_available", "0", PACE.limit(CONFIRM_SECONDS, window)
    )
    device.wait_online("settled")


@pytest.fixture(scope="module")
def after_an_epoch_boot(device: Device) -> Device:
    """The first update comes after a boot at systemd's epoch: a SWUpdate started
    on such a clock refused every later update (docs/decisions.md, "SWUpdate
    starts on demand, not at boot"). test_device.py ends with such a boot; where this module
    runs in a session of its own (scripts/test), it makes one."""
    if device.epoch_boots == 0:
        device.power_cycle_at_the_epoch()
    return device


@pytest.fixture
def updating_device(after_an_epoch_boot: Device) -> Device:
    """The shared device, settled (see settle), with a confirmation window in
    proportion to this run's boots (a per-device setting on /data)."""
    settle(after_an_epoch_boot)
    return after_an_epoch_boot


def _version(device: Device) -> str:
    return str(device.meta()["os"]["version"])


# Older than any image the tests boot (DISTRO_VERSION 1.0 and the updates to
# 1.1-1.3), so the refusals below do not depend on what an earlier test installed.
OLDER = "0.9"


def test_good_update_survives_a_link_cut_and_switches_slots(
    updating_device: Device, boot_image: Path
) -> None:
    device = updating_device
    before = _running_slot(device)
    swu = _build(boot_image, "good", "1.1")
    up = Updating(device, swu)
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
    entry = up.wait_final(job_limit(boots=1))
    assert entry["state"] == "succeeded", (entry, up.states)
    starts = up.ranged_requests()
    assert starts and min(starts) > 0, f"no Range request after the cut: {starts}"
    after = _running_slot(device)
    assert after != before and up.boots[-1] == after
    device.wait_online("after the update")
    assert device.meta()["slot"] == after
    assert _version(device) == "1.1"
    # The new slot confirmed itself: no update pending in the boot environment.
    assert device.vm.check("twelvefactor-bootenv get upgrade_available") == "0"
    changes = [(a, b) for a, b in up.transitions() if a != b]
    assert changes == [
        ("queued", "downloading"),
        ("downloading", "installing"),
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
    _refused(updating_device, _build(boot_image, kind, version), reason)


def _refused(device: Device, swu: Path, reason: str) -> None:
    running = _running_slot(device)
    idle = "B" if running == "A" else "A"
    idle_before = _partition_digest(device.vm.disk, idle)
    up = Updating(device, swu)
    entry = up.wait_final(job_limit(boots=0))
    assert entry["state"] == "failed", (entry, up.states)
    assert str(entry["reason"]).startswith(reason), entry
    assert up.boots == [], "the device rebooted"
    assert _running_slot(device) == running
    assert _partition_digest(device.vm.disk, idle) == idle_before, "the idle slot was written"
    assert device.vm.check("twelvefactor-bootenv get upgrade_available") == "0"


def test_broken_update_rolls_back_within_the_boot_limit(
    updating_device: Device, boot_image: Path
) -> None:
    device = updating_device
    old = _running_slot(device)
    version = _version(device)
    up = Updating(device, _build(boot_image, "broken", "1.2"))
    entry = up.wait_final(job_limit(boots=BOOTLIMIT + 1, windows=BOOTLIMIT))
    assert entry["state"] == "rolled_back", (entry, up.states)
    assert "did not confirm" in str(entry["reason"]), entry
    new = "B" if old == "A" else "A"
    # every boot of the new slot failed to confirm, then GRUB went back
    assert up.boots == [new] * BOOTLIMIT + [old], up.boots
    device.wait_online("after the rollback")
    assert _running_slot(device) == old
    assert device.meta()["slot"] == old and _version(device) == version


def test_power_cuts_during_download_and_install_never_brick(
    updating_device: Device, boot_image: Path
) -> None:
    device = updating_device
    vm = device.vm
    old = _running_slot(device)
    rng = random.Random(20261126)
    up = Updating(device, _build(boot_image, "good", "1.3"))
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
        assert _running_slot(device) == old  # a half-written slot is never selected
    entry = up.wait_final(job_limit(boots=1))
    assert entry["state"] == "succeeded", (entry, cuts, up.states)
    assert len(cuts) == 8, cuts
    device.wait_online("after the update with 8 power cuts")
    assert _running_slot(device) != old
    assert _version(device) == "1.3"


def _older_than_running(device: Device) -> str:
    running = _version(device)
    assert tuple(map(int, OLDER.split("."))) < tuple(map(int, running.split("."))), running
    return OLDER


def test_older_version_is_refused(updating_device: Device, boot_image: Path) -> None:
    older = _older_than_running(updating_device)
    _refused(updating_device, _build(boot_image, "good", older), "downgrade")


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
        _refused(device, _build(boot_image, "tampered", older), "swupdate_refused")
    finally:
        device.vm.check(f"cp /run/agent.toml.orig {conf} && sync")
        device.restart_agent()
