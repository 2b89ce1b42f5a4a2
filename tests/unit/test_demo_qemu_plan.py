"""The pure parts of `scripts/demo --qemu` (testbed/demo_qemu.py, the booting row)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.demo_qemu import TOOLS, QemuDemoError, below_ephemeral, check_can_run, next_version
from testbed.demo_view import cells
from testbed.demo_watch import DeviceRow, machine_row

ONLINE = DeviceRow("qemu-1", True, None, 80.0, "A", "1.0", 0.7, 0, 0, None, None)


def test_a_machine_not_yet_registered_is_a_booting_row() -> None:
    row = machine_row(None, "qemu-1", 42.0)
    assert row.device == "qemu-1" and row.online is None
    shown = cells(row, 0, None)
    assert shown[:5] == ["qemu-1", "booting 42 s", "-", "-", "-"]


def test_a_machine_online_shows_what_the_api_says() -> None:
    shown = cells(machine_row(ONLINE, "qemu-1", 130.0), 3, None)
    assert shown[:5] == ["qemu-1", "online", "80 s", "A", "1.0"]


def test_a_rebooting_machine_is_booting_again_then_off_between_boots() -> None:
    offline = DeviceRow(**{**ONLINE.__dict__, "online": False, "reason": "clean disconnect"})
    assert cells(machine_row(offline, "qemu-1", 150.0), 0, None)[1] == "booting 2 min"
    # its last known slot and version, not the last boot's uptime and load
    assert cells(machine_row(offline, "qemu-1", 5.0), 0, None)[2:6] == ["-", "A", "1.0", "-"]
    assert cells(machine_row(ONLINE, "qemu-1", None), 0, None)[1] == "powered off"


@pytest.mark.parametrize(
    ("image", "update"), [("1.0", "1.1"), ("1.9", "1.10"), ("6.0.2", "6.0.3"), ("7", "8")]
)
def test_the_update_is_the_next_version(image: str, update: str) -> None:
    assert next_version(image) == update


def test_a_version_that_does_not_end_in_a_number_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'1\.0-rc' does not end in a number"):
        next_version("1.0-rc")


def test_qemu_needs_root_first() -> None:
    with pytest.raises(QemuDemoError, match="--qemu needs root"):
        check_can_run(1000, which=lambda tool: f"/usr/bin/{tool}", exists=lambda p: True)


def test_missing_tools_and_firmware_are_named_with_the_setup_line() -> None:
    absent = {"wireguard-go", "qemu-system-x86_64"}

    def which(tool: str) -> str | None:
        return None if tool in absent else f"/usr/bin/{tool}"

    def exists(path: Path) -> bool:
        return "VARS" not in str(path)

    with pytest.raises(QemuDemoError) as caught:
        check_can_run(0, which=which, exists=exists)
    message = str(caught.value)
    assert "wireguard-go, qemu-system-x86_64, /usr/share/OVMF/OVMF_VARS_4M.fd" in message
    assert "scripts/setup qemu" in message
    # root, every tool and the firmware: nothing to say
    assert check_can_run(0, which=lambda tool: f"/usr/bin/{tool}", exists=lambda p: True) is None
    assert "wireguard-go" in TOOLS and "qemu-system-x86_64" in TOOLS


def test_the_hubs_free_ports_are_below_the_hosts_ephemeral_range() -> None:
    assert below_ephemeral((32768, 60999)) == (24576, 32767)
    with pytest.raises(QemuDemoError, match="ephemeral ports start at 4000"):
        below_ephemeral((4000, 60999))
