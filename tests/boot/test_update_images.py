"""The update images the boot tests install (refimage/updates.py), made from the
image under test and checked with the tools a device or an attacker would use:
`cpio` to unpack, `openssl cms -verify` against the layer's certificate, the
sha256 sw-description names, `zstd`, and `debugfs` inside the root file system.

Boot tier: the kinds are built from the device image (the reference image by
default, or --image), which needs root; nothing here starts QEMU.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
from helpers import require_root, require_tool
from twelvefactor_agent.device.sysinfo import parse_os_release
from twelvefactor_services.artifact.swu import describe

from refimage import disk, imagesize, partfs, swu, updates

ROOT = Path(__file__).resolve().parents[2]
CERT = ROOT / "meta-twelvefactor/files/dev-signing/twelvefactor-dev-update.crt"
OUT = ROOT / "build" / "refimage"  # the builder's cache, shared with the boot tests
VERSION = "1.1"
SIGNED = ("good", "broken", "tampered", "other-hw", "package")


@pytest.fixture(scope="module")
def built(boot_image: Path) -> dict[str, Path]:
    require_root()
    for tool in ("debugfs", "cpio", "openssl", "zstd", "cmp"):
        require_tool(tool)
    return {
        kind: updates.build(ROOT, boot_image, OUT, kind=kind, version=VERSION)
        for kind in updates.KINDS
    }


def _unpack(swu_file: Path, dest: Path) -> list[str]:
    """Members of the .swu in archive order, extracted into dest."""
    dest.mkdir()
    with swu_file.open("rb") as f:
        subprocess.run(["cpio", "-i", "--quiet"], stdin=f, cwd=dest, check=True)
    with swu_file.open("rb") as f:
        listing = subprocess.run(["cpio", "-t", "--quiet"], stdin=f, capture_output=True)
    return listing.stdout.decode().split()


def _named_sha256(description: str) -> str:
    found = set(re.findall(r'sha256 = "([0-9a-f]{64})"', description))
    assert len(found) == 1, f"one image digest expected in sw-description, found {found}"
    return found.pop()


def _cms_verify(folder: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            folder / swu.SIGNATURE,
            "-content",
            folder / swu.DESCRIPTION,
            "-binary",
            "-CAfile",
            CERT,
            "-out",
            "/dev/null",
        ],
        capture_output=True,
    )


def _rootfs_of(folder: Path, out: Path) -> Path:
    """The ext4 image in the unpacked .swu, decompressed (sparse) to `out`."""
    (packed,) = folder.glob("*.rootfs.ext4.zst")
    # --sparse: the empty blocks of the ext4 become holes, as SWUpdate need not
    subprocess.run(["zstd", "-d", "-q", "-f", "--sparse", packed, "-o", out], check=True)
    return out


def _debugfs(fs: Path, request: str) -> str:
    done = subprocess.run(["debugfs", "-R", request, fs], capture_output=True, text=True)
    return done.stdout


def _debugfs_err(fs: Path, request: str) -> str:
    done = subprocess.run(["debugfs", "-R", request, fs], capture_output=True, text=True)
    return done.stderr


def _cat_bytes(fs: Path, path: str) -> bytes:
    return subprocess.run(["debugfs", "-R", f"cat {path}", fs], capture_output=True).stdout


def test_signed_kinds_verify_and_unsigned_has_no_signature(
    built: dict[str, Path], tmp_path: Path
) -> None:
    for kind, swu_file in built.items():
        folder = tmp_path / kind
        members = _unpack(swu_file, folder)
        assert members[0] == swu.DESCRIPTION, f"{kind}: {members}"
        if kind in SIGNED:
            assert members[1] == swu.SIGNATURE, f"{kind}: {members}"
            done = _cms_verify(folder)
            assert done.returncode == 0, f"{kind}: {done.stderr.decode()}"
        else:
            assert swu.SIGNATURE not in members, f"{kind}: {members}"
        for member in members[1:]:
            (folder / member).unlink()


def test_image_digest_matches_except_when_tampered(built: dict[str, Path], tmp_path: Path) -> None:
    packed: dict[str, Path] = {}
    named: dict[str, str] = {}
    for kind, swu_file in built.items():
        folder = tmp_path / kind
        _unpack(swu_file, folder)
        (packed[kind],) = folder.glob("*.rootfs.ext4.zst")
        named[kind] = _named_sha256((folder / swu.DESCRIPTION).read_text())
    for kind in built:
        if kind == "tampered":
            assert named[kind] != swu.sha256_file(packed[kind])
        else:
            assert named[kind] == swu.sha256_file(packed[kind]), kind
    # good, unsigned, tampered and other-hw carry the same root file system
    for kind in ("unsigned", "tampered", "other-hw"):
        assert named[kind] == named["good"], kind
    assert named["broken"] != named["good"]
    # tampered: good's image behind a skippable frame; it decompresses to the
    # same bytes, so only the digest in sw-description can refuse it
    good, tampered = packed["good"].read_bytes(), packed["tampered"].read_bytes()
    assert tampered.endswith(good) and len(tampered) == len(good) + len(updates.SKIPPABLE_FRAME)
    assert _decompressed_sha256(packed["tampered"]) == _decompressed_sha256(packed["good"])


def _decompressed_sha256(packed: Path) -> str:
    proc = subprocess.Popen(["zstd", "-d", "-q", "-c", packed], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    h = hashlib.sha256()
    while block := proc.stdout.read(1 << 20):
        h.update(block)
    assert proc.wait() == 0, f"zstd -d {packed} failed"
    return h.hexdigest()


def test_version_and_hardware_in_sw_description(built: dict[str, Path], boot_image: Path) -> None:
    board, revision = swu.hwrevision(boot_image)
    for kind, swu_file in built.items():
        info = describe(swu_file)  # the management service's reader
        assert info.version == VERSION, kind
        if kind == "other-hw":
            assert set(info.hardware) == {board}
            assert revision not in info.hardware[board]
        else:
            assert info.hardware == {board: (revision,)}, kind


@pytest.mark.parametrize("kind", ["good", "broken", "package"])
def test_root_file_system_inside_the_swu(
    built: dict[str, Path], boot_image: Path, tmp_path: Path, kind: str
) -> None:
    folder = tmp_path / "swu"
    _unpack(built[kind], folder)
    fs = _rootfs_of(folder, tmp_path / "rootfs.ext4")
    # sized from its content as oe-core sizes the Yocto artifact's ext4 image,
    # which fits the slot and does not fill it
    # (1.3 times what it held before the shrink, which freed some of ext4's own
    # inode tables: a little more than 1.3 times what it holds now)
    ratio = fs.stat().st_size / (imagesize.used_kib(fs) * 1024)
    assert imagesize.OVERHEAD_FACTOR <= ratio < imagesize.OVERHEAD_FACTOR * 1.1, ratio
    assert fs.stat().st_size % 1024 == 0
    assert fs.stat().st_size < disk.read_table(boot_image)["rootfs-a"][1]
    link = _debugfs(fs, "stat /etc/os-release")
    target = "/usr/lib/os-release"
    if "Type: symlink" in link:
        assert 'Fast link dest: "../usr/lib/os-release"' in link
    else:
        target = "/etc/os-release"
    release = parse_os_release(_debugfs(fs, f"cat {target}"))  # the agent's parser
    assert release["version"] == VERSION
    assert release["pretty"] is not None and VERSION in release["pretty"]
    dropin = _debugfs(fs, f"cat {updates.BROKEN_DROPIN}")
    if kind == "broken":
        assert dropin == updates.BROKEN_DROPIN_TEXT
        assert "ExecStart=/bin/false" in dropin.splitlines()
    else:
        assert dropin == ""
    # the rest is the image's, e.g. its /etc/hwrevision
    original = partfs.read_text(boot_image, "rootfs-a", "/etc/hwrevision")
    assert _debugfs(fs, "cat /etc/hwrevision") == original
    # the package kind: the agent's version, and every file of the other build of
    # dosfstools dpkg would install, through the image's merged-/usr links
    init = _debugfs(fs, f"cat {updates.AGENT_INIT}")
    image_init = partfs.read_text(boot_image, "rootfs-a", updates.AGENT_INIT)
    probe = _cat_bytes(fs, updates.PACKAGE_PROBE)
    if kind != "package":
        assert init == image_init
        assert probe == partfs.read(boot_image, "rootfs-a", updates.PACKAGE_PROBE)
        return
    (old,) = updates.AGENT_VERSION_RE.findall(image_init)
    assert updates.AGENT_VERSION_RE.findall(init) == [f"{old}+r{VERSION}"]
    deb = tmp_path / "deb"
    subprocess.run(["dpkg-deb", "-x", updates.fetch_package(OUT), deb], check=True)
    assert probe == (deb / "sbin" / Path(updates.PACKAGE_PROBE).name).read_bytes()
    assert probe != partfs.read(boot_image, "rootfs-a", updates.PACKAGE_PROBE)
    assert 'Fast link dest: "fsck.fat"' in _debugfs(fs, "stat /usr/sbin/fsck.vfat")
    assert _debugfs(fs, "cat /usr/share/doc/dosfstools/copyright").startswith("Format:")
    assert "File not found" in _debugfs_err(fs, "stat /usr/share/man/man8/fsck.fat.8.gz")


def test_a_second_call_takes_the_cache(built: dict[str, Path], boot_image: Path) -> None:
    for kind, swu_file in built.items():
        before = swu_file.stat()
        again = updates.build(ROOT, boot_image, OUT, kind=kind, version=VERSION)
        assert again == swu_file
        after = again.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), kind
