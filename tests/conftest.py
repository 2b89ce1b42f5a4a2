"""Test tiers and shared checks.

Each test gets the marker of its folder (unit, integration, network, boot;
the static layer checks in tests/layer are unit tests). A test that needs a
host tool or root fails with a clear message instead of skipping: a missing
dependency must never pass silently in CI.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import require_root, require_tool

from testbed.pace import PACE

__all__ = ["require_root", "require_tool"]

ROOT = Path(__file__).resolve().parent.parent
TIER_OF_FOLDER = {
    "unit": "unit",
    "layer": "unit",
    "integration": "integration",
    "network": "network",
    "boot": "boot",
}


# A per-test limit (pytest-timeout) so that a silent hang fails one test instead
# of stalling the run. The boot tier's own waits follow its measured boots
# (testbed/boot/pace.py) and fire long before this backstop; the first boot test
# also builds the reference image.
BOOT_TEST_LIMIT = 3600


def tier_of(path: Path) -> str | None:
    rel = path.resolve().relative_to(ROOT / "tests")
    return TIER_OF_FOLDER.get(rel.parts[0]) if len(rel.parts) > 1 else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(Path(str(item.fspath)))
        if tier is None:
            rel = Path(str(item.fspath)).resolve().relative_to(ROOT / "tests")
            raise pytest.UsageError(f"{rel}: tests live in one of {sorted(TIER_OF_FOLDER)}")
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "boot" and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(BOOT_TEST_LIMIT))


# Seconds spent in each tier's tests (set-up, call and tear-down), printed at the end.
_TIER_SECONDS: dict[str, float] = {}
_TIER_TESTS: dict[str, int] = {}
_STARTED = time.monotonic()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = tier_of(ROOT / report.nodeid.split("::")[0])
    if tier is None:
        return
    _TIER_SECONDS[tier] = _TIER_SECONDS.get(tier, 0.0) + report.duration
    if report.when == "call":
        _TIER_TESTS[tier] = _TIER_TESTS.get(tier, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _TIER_SECONDS:
        return
    terminalreporter.section("time per tier")
    for tier in sorted(_TIER_SECONDS, key=list(TIER_OF_FOLDER.values()).index):
        minutes = _TIER_SECONDS[tier] / 60
        tests = _TIER_TESTS.get(tier, 0)
        terminalreporter.write_line(f"{tier:12} {tests:4} tests {minutes:6.1f} min")
    wall = (time.monotonic() - _STARTED) / 60
    terminalreporter.write_line(f"{'this session':12} {'':10} {wall:6.1f} min of wall time")
    if PACE.steps:  # the host tiers' limits followed these (testbed/pace.py)
        terminalreporter.section("pace of the host tiers")
        for line in PACE.summary():
            terminalreporter.write_line(line)


# The boot tier's options live here, in the top conftest: pytest only takes options
# from conftests it loads before collecting, so `scripts/test -m boot --image X` works.
def power_cuts(text: str) -> tuple[int, int]:
    """--power-cuts DOWNLOAD,INSTALL: two counts, each at least 1."""
    try:
        download, install = (int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DOWNLOAD,INSTALL, e.g. 5,3") from None
    if download < 1 or install < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least one cut in each")
    return download, install


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("boot", "boot tier (QEMU)")
    group.addoption(
        "--image",
        type=Path,
        default=None,
        help="disk image to boot (default: build the reference image); its machine is read"
        " from its ESP (GRUB: x86-64 with OVMF; U-Boot: arm64 virt, u-boot.bin beside it)",
    )
    group.addoption(
        "--machine",
        default="qemux86-64",
        choices=["qemux86-64", "qemuarm64"],
        help="the machine of the reference image built when no --image is given",
    )
    group.addoption(
        "--accel",
        default="tcg",
        choices=["tcg", "kvm"],
        help="QEMU accelerator (default tcg: the CI machines have no KVM)",
    )
    group.addoption(
        "--power-cuts",
        default="5,3",
        metavar="DOWNLOAD,INSTALL",
        type=power_cuts,
        help="power cuts at random points of an update's download and of its install"
        " (default 5,3, as the update issue asks; scripts/test makes 2,2 in the whole"
        " suite's run, to fit its time: docs/decisions.md)",
    )
    group.addoption(
        "--epoch-boot-elsewhere",
        action="store_true",
        help="no boot at systemd's epoch before this session's first update: another"
        " session of the same run makes one before its updates (scripts/test: the boot"
        " session, test_device.py then the power cuts)",
    )
