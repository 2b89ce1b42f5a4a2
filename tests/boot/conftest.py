"""Boot tier: the device image in QEMU (OVMF, TCG), driven over the serial console.

The image is a parameter: `pytest tests/boot --image PATH` runs these tests
against any image with the twelvefactor disk contract (GPT names esp,
rootfs-a, rootfs-b, data; root logs in on the serial console), for example a
Yocto `twelvefactor-image-qemux86-64.rootfs.wic` built with kas/dev.yml. Without
--image the reference image is built (or taken from its cache in
build/refimage). One provisioned copy of the image is booted once per session
and shared by the tests; a power cycle restarts QEMU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import require_root, require_tool

from refimage import image as refimage_image
from testbed.boot import board
from testbed.boot.device import Device, provision_device
from testbed.boot.hub import STALE_AFTER, Hub
from testbed.boot.pace import PACE
from testbed.boot.updating import settle
from testbed.boot.vm import VMError

ROOT = Path(__file__).resolve().parents[2]

DEVICE_ID = "boot-dev-1"
_shared: dict[str, Device] = {}  # the session's device, for failure reports
_login: list[tuple[str, float]] = []  # the first boot's power-on to login prompt, by board


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if PACE.boots:
        terminalreporter.section("boot: power-on to online")
        for board_name, seconds in _login:
            terminalreporter.write_line(
                f"{seconds:7.1f} s  first boot to the login prompt ({board_name})"
            )
        for what, seconds in PACE.boots:
            terminalreporter.write_line(f"{seconds:7.1f} s  {what}")
        terminalreporter.write_line(f"limits scaled by {PACE.ratio:.2f} (slowest boot / reference)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that used the device says what the device was doing: one
    slow step must read as one slow step, not as the next test's failure."""
    report = yield
    device = getattr(item, "funcargs", {}).get("device") or _shared.get("device")
    if report.failed and isinstance(device, Device) and "device" in item.fixturenames:
        report.sections.append(("device at the failure", describe(device)))
    return report


def describe(device: Device) -> str:
    """What the device and the hub were doing: job states, the agent's journal, the console."""
    vm = device.vm
    parts = [f"QEMU running: {vm.running}; boots so far: {vm.boots}; {PACE.boots[-3:]}"]
    try:
        parts.append(f"management record: {device.hub.device(device.device_id)}")
        status, jobs = device.hub.management_get("/jobs")
        parts.append(f"jobs ({status}): {jobs}")
    except Exception as exc:  # a report must never hide the failure it describes
        parts.append(f"management service: {exc!r}")
    if vm.running:
        try:
            for command in (
                "systemctl --failed --no-legend --plain",
                "twelvefactor-bootenv get upgrade_available",
                "journalctl -b -u twelvefactor-agent -u twelvefactor-confirm --no-pager | tail -30",
            ):
                parts.append(f"$ {command}\n{vm.run(command, timeout=30).output}")
        except (VMError, OSError) as exc:
            parts.append(f"console did not answer: {exc}"[:2000])
    parts.append(f"hub log:\n{device.hub.log_tail(20)}")
    parts.append(f"console tail:\n{vm.tail(3000)}")
    return "\n".join(parts)


def _option(config: pytest.Config, name: str, default: Any) -> Any:
    # The options are declared in tests/conftest.py, so `pytest --image X` works from the top.
    value = config.getoption(name)
    return default if value is None else value


@pytest.fixture(scope="session")
def boot_image(request: pytest.FixtureRequest) -> Path:
    """The image under test: --image, or the reference image (built once, cached)."""
    given = _option(request.config, "image", None)
    if given is not None:
        path = Path(given).resolve()
        if not path.is_file():
            pytest.fail(f"--image {path}: no such file", pytrace=False)
        return path
    require_root()
    machine = request.config.getoption("machine")
    tools = ["mmdebstrap", "mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk"]
    if machine == "qemux86-64":
        tools += ["grub-mkstandalone"]
    else:  # U-Boot from source, the ESP as the layer's recipes make it
        tools += ["aarch64-linux-gnu-gcc", "bison", "flex", "bc", "mkimage", "mkenvimage"]
        tools += ["qemu-aarch64-static", "arch-test"]
    for tool in tools:
        require_tool(tool)
    out = refimage_image.default_out(machine)
    return refimage_image.build(out, machine=machine).disk


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    require_root()
    for tool in ("ip", "wireguard-go", "wg", "mosquitto"):
        require_tool(tool)
    h = Hub(tmp_path_factory.mktemp("hub"))
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="session")
def device(
    request: pytest.FixtureRequest,
    boot_image: Path,
    hub: Hub,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Device]:
    """A provisioned copy of the image, booted and online; shared by the session."""
    for tool in (board.of_image(boot_image).qemu, "debugfs", "fallocate", "mdir"):
        require_tool(tool)
    work = tmp_path_factory.mktemp("device")
    accel = _option(request.config, "accel", os.environ.get("TWELVEFACTOR_QEMU_ACCEL", "tcg"))
    dev = provision_device(boot_image, hub, work, DEVICE_ID, accel)
    vm = dev.vm
    try:
        # the first boot's underlay, as QEMU passes it on (test_device.py's egress test)
        vm.capture = dev.first_boot_capture = work / "first-boot.pcap"
        dev.power_on()
        vm.capture = None  # read at power-on: later boots are not captured
        _login.append((vm.board.arch, vm.login()))
        dev.wait_online("first boot")
        _shared["device"] = dev
        yield dev
    finally:
        vm.power_cut()
        print(f"console log: {vm.console_log}")


@pytest.fixture(scope="module")
def after_an_epoch_boot(request: pytest.FixtureRequest, device: Device) -> Device:
    """The first update comes after a boot at systemd's epoch: a SWUpdate started
    on such a clock refused every later update (docs/decisions.md, "SWUpdate
    starts on demand, not at boot"). test_device.py ends with such a boot; where the
    update tests run in a session of their own, the first module makes one, unless
    --epoch-boot-elsewhere says another session of the run covers it (scripts/test:
    a boot of about two minutes, with the hub's stale wait, saved twice)."""
    if device.epoch_boots == 0 and not request.config.getoption("epoch_boot_elsewhere"):
        device.power_cycle_at_the_epoch()
        # the device's first handshakes carry a stamp older than the hub's last:
        # the tunnel may come up only once the hub forgets it (STALE_AFTER quiet)
        device.wait_online("a boot at the epoch", waits=STALE_AFTER)
    return device


@pytest.fixture
def updating_device(after_an_epoch_boot: Device) -> Device:
    """The shared device, settled (see settle), with a confirmation window in
    proportion to this run's boots (a per-device setting on /data)."""
    settle(after_an_epoch_boot)
    return after_an_epoch_boot
