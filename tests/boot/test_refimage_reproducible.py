"""The reference image's root file system is reproducible: built twice from the
same inputs (the cached mmdebstrap base, the layer's files, the agent), once for
the image cache and once more into a folder of its own, the two ext4 images are
the same bytes, and they carry the chosen UUID, directory hash seed and
SOURCE_DATE_EPOCH (refimage/reproducible.py).

Boot tier because it builds image parts as root (chroot, mkfs); nothing here
starts QEMU. Only the root file system step runs twice, not mmdebstrap.
"""

from __future__ import annotations

import filecmp
import re
import subprocess
import time
from pathlib import Path

import pytest
from helpers import require_root, require_tool

from refimage import image, machines, reproducible, rootfs
from refimage.lock import locked

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "refimage"


def _tool(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The cached image's root file system, and the same step run again into a folder of
    its own. The cache's key covers every input, the builder's own code among them
    (image.image_key), so the cached build is a first build of the same inputs, made
    minutes or days earlier: running the step once more is enough, and a clock that
    leaked into the image would show."""
    require_root()
    for tool in ("mmdebstrap", "mkfs.ext4", "debugfs", "dumpe2fs"):
        require_tool(tool)
    first = image.build(CACHE).rootfs  # the boot tier's image, built once per inputs
    with locked(CACHE):  # the base is not rebuilt or pruned under us
        base = image._base_tree(CACHE, CACHE / image.BUILD_LOG, machines.DEFAULT)
        work = tmp_path_factory.mktemp("rootfs")
        try:
            image.build_rootfs(base, work, work / "rootfs.ext4", log=work / "build.log")
        finally:
            rootfs.remove_tree(work / "root")
    return first, work / "rootfs.ext4"


def test_two_builds_are_byte_identical(two_builds: tuple[Path, Path]) -> None:
    first, second = two_builds
    assert first.stat().st_size == second.stat().st_size
    same = filecmp.cmp(first, second, shallow=False)
    if not same:
        diff = subprocess.run(
            ["cmp", "-l", str(first), str(second)], capture_output=True, text=True
        ).stdout.splitlines()
        pytest.fail(f"{len(diff)} bytes differ; first: {diff[:10]}", pytrace=False)


def test_superblock_carries_the_chosen_uuid_seed_and_times(
    two_builds: tuple[Path, Path],
) -> None:
    fixed = image.rootfs_settings(ROOT)
    assert fixed.epoch == reproducible.source_date_epoch(ROOT)
    header = _tool("dumpe2fs", "-h", str(two_builds[0]))
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in header.splitlines())
    )
    assert fields["Filesystem UUID"] == fixed.uuid
    assert fields["Directory Hash Seed"] == fixed.hash_seed
    assert fields["Filesystem volume name"] == image.ROOTFS_LABEL
    epoch_text = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(fixed.epoch))
    assert fields["Filesystem created"] == epoch_text
    assert fields["Last write time"] == epoch_text


def test_files_written_by_the_build_carry_the_epoch(two_builds: tuple[Path, Path]) -> None:
    fixed = image.rootfs_settings(ROOT)
    fs = str(two_builds[0])
    # the agent's entry script and the account files: written during this build
    for path in ("/usr/bin/twelvefactor-agent", "/etc/shadow", "/etc/os-release", "/"):
        stat = _tool("debugfs", "-R", f"stat {path}", fs)
        times = re.findall(r"^\s*(\w+time): (0x[0-9a-f]+):", stat, re.M)
        assert {name for name, _ in times} >= {"ctime", "atime", "mtime", "crtime"}, stat
        for name, value in times:
            assert int(value, 16) == fixed.epoch, f"{path} {name} {int(value, 16)}"


def test_no_per_build_noise(two_builds: tuple[Path, Path]) -> None:
    fixed = image.rootfs_settings(ROOT)
    fs = str(two_builds[0])
    shadow = _tool("debugfs", "-R", "cat /etc/shadow", fs)
    days = {line.split(":")[2] for line in shadow.splitlines() if line.split(":")[2]}
    assert days == {str(fixed.epoch // 86400)}
    assert _tool("debugfs", "-R", "cat /etc/machine-id", fs) == ""
    for gone in ("/etc/shadow-", "/etc/passwd-", "/var/cache/ldconfig/aux-cache"):
        found = subprocess.run(
            ["debugfs", "-R", f"stat {gone}", fs], capture_output=True, text=True
        )
        assert "File not found" in found.stderr, gone
    logs = _tool("debugfs", "-R", "ls -p /var/log", fs)
    # only directories (mode 04xxxx) are left under /var/log
    modes = [line.split("/")[2] for line in logs.splitlines() if line.count("/") >= 6]
    names = [line.split("/")[5] for line in logs.splitlines() if line.count("/") >= 6]
    files = [n for n, m in zip(names, modes, strict=True) if not m.startswith("04")]
    assert files == [], files
