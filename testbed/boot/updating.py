"""An update job on the booted device, watched from the management service.

The hub's management service stores a signed .swu made by the reference-image
builder (refimage.updates) and publishes a job for the device; the test
follows the job's state and powers the device on again whenever it rebooted
(QEMU runs with -no-reboot, as a power supply would). The update tests share
a device and start from whatever slot the previous one left running, but never
from its unfinished business: `settle` brings the device to a known state
first (powered, online, no unfinished job, not in a trial boot). Every limit
follows this run's pace (pace.py).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twelvefactor_services.artifact import swu as swuformat
from twelvefactor_services.artifact.build import build_delta
from twelvefactor_services.artifact.template import Hardware

from refimage import disk, updates
from refimage import swu as refswu
from testbed.boot.device import ROOT, Device
from testbed.boot.pace import PACE, REFERENCE_BOOT
from testbed.boot.vm import KERNEL_SLOT, LOGIN_SECONDS, VMError

# Reference times (pace.py scales them by this run's boots): a job's download,
# SWUpdate's dry run and install took 2-4 minutes in all; a boot REFERENCE_BOOT.
JOB_SECONDS = 180.0
# A new slot's confirmation window (the layer's default is 180 s) starts when
# twelvefactor-confirm does, after the agent is ready (After=twelvefactor-agent),
# so it covers the agent's ready to both sessions online: 2 s at a 99 s boot,
# measured on 2026-12-03. 20 s is ten times that; a device-side setting, so it
# follows this run's pace too. Every boot of a slot that never confirms waits
# it out (three in the broken update): a wider window only costs time.
CONFIRM_SECONDS = 20.0
# A delta install (SWUpdate indexes the running slot, fetches the chunks it lacks,
# writes the new slot): 2.5 min refused, 3.5 min written, measured on 2026-12-03 at a
# 67 s boot when it indexed the whole 768 MiB partition; `source-size` cut the index
# to the file system (2.76 times faster in bench/delta_install.py), so this stays the
# upper figure.
DELTA_SECONDS = 210.0
BOOTLIMIT = 3
DELTA_TARGET = 0.10  # delta / full .swu, RAUC's documented figure for one package (issue 14)
FINAL = ("succeeded", "failed", "rolled_back")
SLOT_PARTITION = {"A": "rootfs-a", "B": "rootfs-b"}


def build_update(boot_image: Path, kind: str, version: str) -> Path:
    return updates.build(ROOT, boot_image, ROOT / "build" / "refimage", kind=kind, version=version)


def build_delta_update(swu: Path, url: str) -> tuple[Path, Path]:
    """The delta .swu and .zck of the full update `swu` (its root file system, the same
    version and hardware), its chunks named at the artifact server `url`: made by the
    artifact tool as `twelvefactor-artifact build --delta-url` makes them, cached beside
    `swu` per URL."""
    folder = swu.parent / f"delta-{hashlib.sha256(url.encode()).hexdigest()[:12]}"
    out, zck = folder / "update.delta.swu", folder / "update.zck"
    if out.exists() and zck.exists() and out.stat().st_mtime >= swu.stat().st_mtime:
        return out, zck
    info = swuformat.describe(swu)
    image = info.files[0].filename
    folder.mkdir(parents=True, exist_ok=True)
    rootfs = folder / image
    with swu.open("rb") as archive, rootfs.open("wb") as out_file:
        subprocess.run(
            ["cpio", "-i", "--quiet", "--to-stdout", image],
            stdin=archive,
            stdout=out_file,
            check=True,
        )
    hardware = [Hardware(board, revs) for board, revs in info.hardware.items()]
    try:
        build_delta(
            rootfs,
            out,
            zck,
            version=info.version,
            hardware=hardware,
            signer=refswu.signer(ROOT),
            url=url,
        )
    finally:
        rootfs.unlink(missing_ok=True)
    return out, zck


def root_image_digest(swu: Path) -> tuple[str, int]:
    """sha256 and size of the root file system inside `swu`, decompressed: the bytes its
    install writes at the start of the idle slot."""
    image = swuformat.describe(swu).files[0].filename
    with swu.open("rb") as archive:
        cpio = subprocess.Popen(
            ["cpio", "-i", "--quiet", "--to-stdout", image], stdin=archive, stdout=subprocess.PIPE
        )
        zstd = subprocess.Popen(["zstd", "-dc"], stdin=cpio.stdout, stdout=subprocess.PIPE)
        assert cpio.stdout is not None and zstd.stdout is not None
        cpio.stdout.close()  # zstd holds it
        h, size = hashlib.sha256(), 0
        while block := zstd.stdout.read(4 << 20):
            h.update(block)
            size += len(block)
        assert zstd.wait() == 0 and cpio.wait() == 0, image
    return h.hexdigest(), size


def package_probe_sha256() -> str:
    """sha256 of the file the package kind's .deb puts at updates.PACKAGE_PROBE."""
    deb = updates.fetch_package(ROOT / "build" / "refimage")
    with tempfile.TemporaryDirectory(prefix="package-probe-") as tmp:
        subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
        _, files, _ = updates.package_files(Path(tmp))
        # the .deb names it before the /usr merge (/sbin), the image after it
        (src,) = (f for d, f in files.items() if Path(d).name == Path(updates.PACKAGE_PROBE).name)
        return hashlib.sha256(src.read_bytes()).hexdigest()


def running_slot(device: Device) -> str:
    return device.vm.check("twelvefactor-bootenv slot")


def job_limit(boots: int, windows: int = 0, link: float = 0.0, delta: int = 0) -> float:
    """Seconds for a job that reboots `boots` times, `windows` of them waiting
    out the confirmation window (a slot that never confirms), on a link that
    adds `link` seconds to its download (a shaped link: no machine's speed
    changes that), with `delta` delta installs tried before it."""
    window = PACE.window(CONFIRM_SECONDS)
    work = JOB_SECONDS + delta * DELTA_SECONDS + boots * REFERENCE_BOOT
    return PACE.limit(work, windows * window + link)


def partition_digest(image: Path, slot: str, length: int | None = None) -> str:
    """sha256 of a slot's partition (its first `length` bytes), read from the host side
    of the disk image."""
    offset, size = disk.read_table(image)[SLOT_PARTITION[slot]]
    if length is not None:
        assert length <= size, (length, size)
        size = length
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

    def __init__(
        self,
        device: Device,
        swu: Path | None = None,
        *,
        job: str = "",
        download_only: bool = False,
        delta: tuple[Path, Path] | None = None,
        before_job: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """A new job for `swu` (held after its download if `download_only`; with `delta`,
        its delta .swu and .zck; `before_job` sees the stored artifact), or (`job`) one
        that exists already."""
        self.device = device
        self.hub = device.hub
        if swu is not None:
            artifact = self.hub.add_artifact(swu)
            if delta is not None:
                artifact = self.hub.add_delta(artifact["sha256"], *delta)
            if before_job is not None:
                before_job(artifact)
            self.sha256 = str(artifact["sha256"])
            self.job = self.hub.create_job(
                self.sha256, device.device_id, download_only=download_only
            )
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
            time.sleep(0.5)
        raise VMError(f"job {self.job}: no {what} in {timeout:.0f} s; last {entry}; {self.states}")

    def wait_swupdate(
        self, lines: str, done: Callable[[list[str]], bool], what: str, timeout: float
    ) -> list[str]:
        """Until `done` holds for the lines of this boot's SWUpdate journal that match the
        extended regular expression `lines` (SWUpdate is the daemon the agent hands the
        file to; it says where a delta install stands, which no report does: the .swu
        fed to it is the zchunk header, fed whole before the handler starts). Raises
        when the job ends first."""
        deadline = time.monotonic() + timeout
        command = f"journalctl -b -u swupdate --no-pager -o cat | grep -E '{lines}' || true"
        while time.monotonic() < deadline:
            self.keep_powered()
            journal = self.device.vm.check(command).splitlines()
            if done(journal):
                return journal
            entry = self.state()
            if entry["state"] in FINAL:
                raise VMError(f"job {self.job} ended {entry} waiting for {what}; {self.states}")
            time.sleep(0.5)
        raise VMError(f"job {self.job}: no {what} in {timeout:.0f} s; {self.states}")

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


def unfinished_jobs(device: Device) -> list[str]:
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
    for job in unfinished_jobs(device):
        left = Updating(device, job=job)
        left.wait_final(job_limit(boots=BOOTLIMIT + 1, windows=BOOTLIMIT))
    vm.wait_for(
        "twelvefactor-bootenv get upgrade_available", "0", PACE.limit(CONFIRM_SECONDS, window)
    )
    device.wait_online("settled")


def version(device: Device) -> str:
    return str(device.meta()["os"]["version"])
