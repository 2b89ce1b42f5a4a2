"""Firmware updates end to end, driven by the management service.

The hub's management service stores a signed .swu made by the reference-image
builder (refimage.updates) and publishes a job for the device; the device's
agent decides, downloads over HTTPS inside the tunnel (resuming with Range),
has SWUpdate check the file (dry run) and install it into the idle slot,
asks for the reboot, and reports until the new slot confirmed itself; or the
bootloader falls back and the agent reports `rolled_back`.

QEMU runs with -no-reboot, so every reboot the device makes ends QEMU: the
tests power it on again, the way the device's power supply would.
The tests run in order and share the device; each starts from whatever slot
the previous one left running.
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
from bootdevice import ROOT, Device
from bootvm import BOOT_TIMEOUT, KERNEL_SLOT, VMError

from refimage import disk, updates

JOB_TIMEOUT = 600.0  # download + dry run + install + reboots under TCG: 2-4 min measured
CONFIRM_WINDOW = 60  # seconds a new slot gets to prove itself (the layer's default is 180)
BOOTLIMIT = 3
FINAL = ("succeeded", "failed", "rolled_back")
SLOT_PARTITION = {"A": "rootfs-a", "B": "rootfs-b"}


def _build(boot_image: Path, kind: str, version: str) -> Path:
    return updates.build(ROOT, boot_image, ROOT / "build" / "refimage", kind=kind, version=version)


def _running_slot(device: Device) -> str:
    return device.vm.check("sed -n 's/.*twelvefactor\\.slot=\\([AB]\\).*/\\1/p' /proc/cmdline")


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

    def __init__(self, device: Device, swu: Path) -> None:
        self.device = device
        self.hub = device.hub
        artifact = self.hub.add_artifact(swu)
        self.sha256 = str(artifact["sha256"])
        self.job = self.hub.create_job(self.sha256, device.device_id)
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
        vm.expect(KERNEL_SLOT, BOOT_TIMEOUT)
        self.boots.append(vm.last_match(1))
        vm.login()

    def wait(
        self,
        done: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = JOB_TIMEOUT,
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

    def wait_final(self, timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
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


@pytest.fixture(scope="module")
def updating_device(device: Device) -> Device:
    """The shared device, with a short confirmation window (a per-device setting on /data)."""
    device.vm.check(
        f"echo TWELVEFACTOR_CONFIRM_WINDOW={CONFIRM_WINDOW} > /data/config/confirm.env && sync"
    )
    return device


def _version(device: Device) -> str:
    return str(device.meta()["os"]["version"])


def test_good_update_survives_a_link_cut_and_switches_slots(
    updating_device: Device, boot_image: Path
) -> None:
    device = updating_device
    before = _running_slot(device)
    swu = _build(boot_image, "good", "1.1")
    up = Updating(device, swu)
    # Cut the tunnel in the middle of the download, then bring it back.
    up.wait(lambda e: e["state"] == "downloading" and (e.get("percent") or 0) >= 20, "20 %")
    device.hub.set_link(False)
    try:
        time.sleep(45)  # longer than the download's 30 s read timeout
        device.vm.drain()
    finally:
        device.hub.set_link(True)
    entry = up.wait_final()
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
    entry = up.wait_final()
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
    entry = up.wait_final()
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
        )
        cuts.append((state, int(e.get("percent") or 0)))
        vm.power_cut()
        up.power_on()
        device.wait_online(f"power cut while {state} ({threshold} %)")
        assert _running_slot(device) == old  # a half-written slot is never selected
    entry = up.wait_final()
    assert entry["state"] == "succeeded", (entry, cuts, up.states)
    assert len(cuts) == 8, cuts
    device.wait_online("after the update with 8 power cuts")
    assert _running_slot(device) != old
    assert _version(device) == "1.3"


def test_older_version_is_refused(updating_device: Device, boot_image: Path) -> None:
    # runs after the power-cut test installed 1.3: the first good update, 1.1, is older
    assert _version(updating_device) == "1.3"
    _refused(updating_device, _build(boot_image, "good", "1.1"), "downgrade")


def test_provisioning_may_allow_older_versions(updating_device: Device, boot_image: Path) -> None:
    """`[update] allow_downgrade = true` in the device's file opens the version gate.

    The offered 1.1 is tampered, so SWUpdate's dry run is what refuses it:
    the job got past the agent's version check, and nothing is installed.
    """
    device = updating_device
    conf = "/data/config/agent.toml"
    assert _version(device) == "1.3"
    device.vm.check(f"cp {conf} /run/agent.toml.orig")
    try:
        device.vm.check(
            f"sed -i 's/^allow_downgrade = false/allow_downgrade = true/' {conf} && sync"
            f" && grep -q '^allow_downgrade = true' {conf}"
        )
        device.restart_agent()
        _refused(device, _build(boot_image, "tampered", "1.1"), "swupdate_refused")
    finally:
        device.vm.check(f"cp /run/agent.toml.orig {conf} && sync")
        device.restart_agent()
