"""The reference-image builder's .swu kinds (refimage/updates.py, refimage/swu.py) are
made by the artifact tool's functions, and the tool's verify tells them apart as
SWUpdate would: good passes, unsigned, tampered and other-hw each fail for their
own reason. The root file system is a small ext4; the boot tier makes the kinds
from the reference image (tests/boot/test_update_images.py) and installs them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import require_tool
from twelvefactor_services.artifact import inspect as inspecting
from twelvefactor_services.artifact.verify import verify

from refimage import imagesize, packages, swu, updates
from refimage.progress import BuildError

ROOT = Path(__file__).resolve().parents[2]
CERT = ROOT / swu.SIGNING_CERT
BOARD, REVISION = "qemux86-64", "1.0"


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for name in ("openssl", "zstd"):
        require_tool(name)
    folder = tmp_path_factory.mktemp("rootfs")
    (folder / "tree").mkdir()
    (folder / "tree/hello").write_text("hello\n")
    fs = folder / "rootfs.ext4"
    subprocess.run([require_tool("mkfs.ext4"), "-q", "-d", folder / "tree", fs, "2M"], check=True)
    return swu.compress(fs, folder / updates.ROOTFS_NAME)


def _kind(tmp_path: Path, packed: Path, kind: str) -> Path:
    hardware = f"{REVISION}-other" if updates.KINDS[kind].other_hw else REVISION
    dest = tmp_path / kind
    updates._swu(ROOT, dest, packed, updates.KINDS[kind], BOARD, hardware, "1.1")
    return dest / updates.SWU_NAME


def test_good(tmp_path: Path, packed: Path) -> None:
    good = _kind(tmp_path, packed, "good")
    assert verify(good, CERT) == []
    found = inspecting.as_json(inspecting.inspect(good))
    assert [f["name"] for f in found["files"]] == [
        swu.DESCRIPTION,
        swu.SIGNATURE,
        swu.image_name(BOARD),
    ]
    assert found["files"][2]["sha256"] == hashlib.sha256(packed.read_bytes()).hexdigest()
    assert (found["version"], found["hardware"]) == ("1.1", {BOARD: [REVISION]})
    # the cache entry holds no second copy of the image
    assert sorted(p.name for p in good.parent.iterdir()) == [
        "sw-description",
        "sw-description.sig",
        "update.swu",
    ]


def test_unsigned(tmp_path: Path, packed: Path) -> None:
    assert verify(_kind(tmp_path, packed, "unsigned"), CERT) == [
        "signature: unsigned (no sw-description.sig in the archive)"
    ]


def test_tampered(tmp_path: Path, packed: Path) -> None:
    tampered = _kind(tmp_path, packed, "tampered")
    (problem,) = verify(tampered, CERT)
    said = hashlib.sha256(packed.read_bytes()).hexdigest()
    assert problem.startswith(f"{swu.image_name(BOARD)}: sha256 is ")
    assert problem.endswith(f", sw-description says {said}")
    image = inspecting.inspect(tampered).files[2]
    assert image.size == packed.stat().st_size + len(updates.SKIPPABLE_FRAME)
    assert swu.image_name(BOARD) not in {p.name for p in tampered.parent.iterdir()}


def test_other_hardware(tmp_path: Path, packed: Path) -> None:
    other = _kind(tmp_path, packed, "other-hw")
    assert verify(other, CERT) == []  # signed and intact: the device's revision refuses it
    assert inspecting.inspect(other).info.hardware == {BOARD: (f"{REVISION}-other",)}


def test_a_version_the_agent_refuses() -> None:
    with pytest.raises(BuildError, match="not numbers separated by dots"):
        updates.check("good", "1.1-rc1")
    with pytest.raises(BuildError, match="unknown update kind"):
        updates.check("evil", "1.1")


def test_ext4_image_size_is_oe_cores() -> None:
    """image.bbclass's get_rootfs_size() with oe-core's defaults."""
    assert imagesize.oe_rootfs_kib(100_000) == 130_000
    assert imagesize.oe_rootfs_kib(100_001) == 130_002  # 130001.3, rounded up
    assert imagesize.oe_rootfs_kib(1_000) == imagesize.ROOTFS_SIZE_KIB  # the minimum
    with pytest.raises(BuildError, match="IMAGE_ROOTFS_MAXSIZE"):
        imagesize.oe_rootfs_kib(700_000)
    with pytest.raises(ValueError):
        imagesize.oe_rootfs_kib(-1)


def test_a_partition_sized_ext4_image_shrinks_to_oe_cores_size(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hwrevision").write_text("qemux86-64 1.0\n")
    (tree / "blob").write_bytes(hashlib.sha256(b"x").digest() * 4096 * 32)  # 4 MiB
    fs = tmp_path / "rootfs.ext4"
    subprocess.run(
        [require_tool("mkfs.ext4"), "-q", "-F", "-d", tree, fs, "256M"], check=True, timeout=120
    )
    used = imagesize.used_kib(fs)
    assert imagesize.shrink_like_oe(fs) == imagesize.oe_rootfs_kib(used)
    assert fs.stat().st_size == imagesize.oe_rootfs_kib(used) * 1024 < 256 << 20
    check = subprocess.run([require_tool("e2fsck"), "-fn", fs], capture_output=True, timeout=120)
    assert check.returncode == 0, check.stdout
    listed = subprocess.run(
        [require_tool("debugfs"), "-R", "cat /etc/hwrevision", fs],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert listed.stdout == "qemux86-64 1.0\n"


def test_dpkg_path_filters_keep_copyrights_and_drop_manuals() -> None:
    assert packages.installed("/usr/sbin/fsck.fat")
    assert packages.installed("/usr/share/doc/dosfstools/copyright")
    assert not packages.installed("/usr/share/doc/dosfstools/changelog.gz")
    assert not packages.installed("/usr/share/man/man8/fsck.fat.8.gz")
    assert packages.installed("/usr/share/locale/locale.alias")
    assert not packages.installed("/usr/share/locale/de/LC_MESSAGES/x.mo")


def _elf(machine: int, text: bytes) -> bytes:
    """Enough of an ELF file for its e_machine (offset 18): the builder compares it."""
    return b"\x7fELF" + bytes(14) + machine.to_bytes(2, "little") + text


X86_64, AARCH64 = 0x3E, 0xB7


def _deb(folder: Path, machine: int = X86_64) -> Path:
    """A pre-/usr-merge package, as bookworm's dosfstools is: /sbin, links, manuals."""
    tree = folder / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: dosfstools\nVersion: 9.9-1\nArchitecture: amd64\n"
        "Maintainer: t <t@example.org>\nDescription: test\n"
    )
    (tree / "sbin").mkdir()
    (tree / "sbin/fsck.fat").write_bytes(_elf(machine, b"new fsck"))
    (tree / "sbin/fsck.fat").chmod(0o755)
    (tree / "sbin/fsck.vfat").symlink_to("fsck.fat")
    (tree / "usr/share/doc/dosfstools").mkdir(parents=True)
    (tree / "usr/share/doc/dosfstools/copyright").write_text("Format: test\n")
    (tree / "usr/share/doc/dosfstools/changelog.gz").write_bytes(b"not installed")
    (tree / "usr/share/man/man8").mkdir(parents=True)
    (tree / "usr/share/man/man8/fsck.fat.8.gz").write_bytes(b"not installed")
    subprocess.run(
        [require_tool("dpkg-deb"), "-b", "--root-owner-group", tree, folder / "t.deb"],
        check=True,
        capture_output=True,
    )
    return folder / "t.deb"


def _merged_usr_fs(folder: Path, *, with_probe: bool = True) -> Path:
    tree = folder / "root"
    (tree / "usr/sbin").mkdir(parents=True)
    (tree / "sbin").symlink_to("usr/sbin")
    if with_probe:
        (tree / "usr/sbin/fsck.fat").write_bytes(_elf(X86_64, b"old fsck"))
    init = tree / updates.AGENT_INIT.lstrip("/")
    init.parent.mkdir(parents=True)
    init.write_text('"""The agent."""\n\n__version__ = "0.4.2"\n')
    fs = folder / "rootfs.ext4"
    subprocess.run([require_tool("mkfs.ext4"), "-q", "-d", tree, fs, "4M"], check=True)
    return fs


def _read(fs: Path, path: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["debugfs", "-R", f"cat {path}", fs], capture_output=True)


def test_package_kind_writes_the_package_through_the_merged_usr_links(tmp_path: Path) -> None:
    require_tool("debugfs")
    fs = _merged_usr_fs(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    updates._change_package(fs, work, _deb(tmp_path), "3.1")
    assert _read(fs, "/usr/sbin/fsck.fat").stdout == _elf(X86_64, b"new fsck")
    link = subprocess.run(["debugfs", "-R", "stat /usr/sbin/fsck.vfat", fs], capture_output=True)
    assert b'Fast link dest: "fsck.fat"' in link.stdout
    mode = subprocess.run(["debugfs", "-R", "stat /usr/sbin/fsck.fat", fs], capture_output=True)
    assert b"Mode:  0755" in mode.stdout
    assert _read(fs, "/usr/share/doc/dosfstools/copyright").stdout == b"Format: test\n"
    for dropped in ("/usr/share/doc/dosfstools/changelog.gz", "/usr/share/man/man8/fsck.fat.8.gz"):
        assert b"not found" in _read(fs, dropped).stderr, dropped
    assert b'__version__ = "0.4.2+r3.1"' in _read(fs, updates.AGENT_INIT).stdout
    assert list(work.iterdir()) == []  # the work folder becomes the cache entry


def test_package_kind_refuses_an_image_without_the_package(tmp_path: Path) -> None:
    require_tool("debugfs")
    fs = _merged_usr_fs(tmp_path, with_probe=False)
    with pytest.raises(BuildError, match=r"the image has no /usr/sbin/fsck\.fat"):
        updates._change_package(fs, tmp_path, _deb(tmp_path), "3.1")


def test_package_kind_refuses_a_package_for_another_machine(tmp_path: Path) -> None:
    require_tool("debugfs")
    fs = _merged_usr_fs(tmp_path)
    with pytest.raises(BuildError, match="e_machine b700 against 3e00"):
        updates._change_package(fs, tmp_path, _deb(tmp_path, AARCH64), "3.1")


def test_prune_keeps_what_was_used_lately_and_drops_the_oldest_beyond_keep(
    tmp_path: Path,
) -> None:
    """Several boot sessions build into one cache at once: a count alone let one remove
    the .swu another was installing."""
    now = time.time()
    entries = []
    for n in range(updates.KEEP + 4):
        entry = tmp_path / f"good-1.{n}-x"
        entry.mkdir()
        (entry / updates.MANIFEST).write_text(json.dumps({"image": "/elsewhere.img"}))
        entries.append(entry)
    updates._prune(tmp_path, keep=set())
    assert all(e.exists() for e in entries)  # all used just now
    old = now - updates.KEEP_SECONDS - 60
    for n, entry in enumerate(entries):  # the first ones the least recently used
        os.utime(entry, (old + n, old + n))
    updates._prune(tmp_path, keep={entries[0]})
    assert [e.exists() for e in entries] == [True] + [False] * 3 + [True] * updates.KEEP
