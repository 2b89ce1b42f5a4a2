"""SWUpdate's own reader accepts what twelvefactor-artifact builds, and refuses what
the tool's verify refuses.

The host has no swupdate (scripts/setup does not install it), so the SWUpdate
of the image under test does the checking: the image's rootfs-a, copied out,
mounted read-only through a loop device in a private mount namespace (all of
it gone when the namespace ends), a tmpfs on its /tmp, and `swupdate -c`
(check mode: the signature against -k, the hardware against -H, every image
streamed through the dummy handler and its sha256) run chrooted into it. The
first artifact is built from that same root file system; the variants carry a
small ext4.

Boot tier: needs root and the image (the reference image by default, or
--image, an x86-64 one: the chroot runs its binaries); nothing starts QEMU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import require_root, require_tool
from twelvefactor_services.artifact.build import build_swu
from twelvefactor_services.artifact.cms import Signer
from twelvefactor_services.artifact.swu import DESCRIPTION, SIGNATURE, write_archive
from twelvefactor_services.artifact.template import Hardware
from twelvefactor_services.artifact.verify import verify

from refimage import disk, swu, updates

ROOT = Path(__file__).resolve().parents[2]
DEV = Signer(ROOT / swu.SIGNING_KEY, ROOT / swu.SIGNING_CERT)

# Mounts in a private namespace; the loop device is released when it ends.
CHECK = """
set -e
mount --make-rprivate /
mount -o loop,ro "$FS" "$TOP"
mount -t tmpfs tmpfs "$TOP/tmp"
mkdir "$TOP/tmp/in"
mount --bind "$IN" "$TOP/tmp/in"
mount -t proc proc "$TOP/proc"
mount --rbind /dev "$TOP/dev"
exec chroot "$TOP" swupdate -v -c -i "/tmp/in/$SWU" -k "/tmp/in/$CERT" -H "$HW" -e stable,copy2
"""


@dataclass(frozen=True)
class Device:
    fs: Path  # the image's rootfs-a
    board: str
    revision: str
    folder: Path


@pytest.fixture(scope="module")
def device(boot_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Device:
    require_root()
    for tool in ("unshare", "mount", "chroot", "debugfs", "zstd", "openssl", "mkfs.ext4", "cpio"):
        require_tool(tool)
    folder = tmp_path_factory.mktemp("swupdate")
    fs = folder / "rootfs.ext4"
    disk.extract(boot_image, "rootfs-a", fs)
    board, revision = swu.hwrevision(boot_image)
    return Device(fs, board, revision, folder)


@pytest.fixture(scope="module")
def small(device: Device) -> Path:
    fs = device.folder / "small.ext4"
    subprocess.run([require_tool("mkfs.ext4"), "-q", fs, "2M"], check=True, capture_output=True)
    return fs


def swupdate(
    device: Device, swu_file: Path, hardware: str, cert: Path = DEV.cert
) -> subprocess.CompletedProcess[str]:
    """`swupdate -c` of the image under test on `swu_file`, as board:revision `hardware`."""
    given = device.folder / "in"
    if given.exists():
        shutil.rmtree(given)
    given.mkdir()
    shutil.copy(swu_file, given / "update.swu")
    shutil.copy(cert, given / "cert.crt")
    top = device.folder / "top"
    top.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "FS": str(device.fs),
        "TOP": str(top),
        "IN": str(given),
        "SWU": "update.swu",
        "CERT": "cert.crt",
        "HW": hardware,
    }
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _unpack(swu_file: Path, dest: Path) -> None:
    with swu_file.open("rb") as f:
        subprocess.run(["cpio", "-i", "--quiet", "-u"], stdin=f, cwd=dest, check=True)


def _accepted(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode == 0 and "SWUPDATE successful" in done.stdout + done.stderr


def test_the_root_file_system_artifact(device: Device) -> None:
    built = build_swu(
        device.fs,
        device.folder / "good.swu",
        version="1.1",
        hardware=[Hardware(device.board, (device.revision,))],
        signer=DEV,
    )
    assert verify(built.path, DEV.cert) == []
    done = swupdate(device, built.path, f"{device.board}:{device.revision}")
    assert _accepted(done), done.stdout[-3000:] + done.stderr[-3000:]
    assert "Verified OK" in done.stdout + done.stderr  # the CMS signature


def test_several_boards_and_revisions_uncompressed(device: Device, small: Path) -> None:
    hardware = [Hardware(device.board, ("0.9", device.revision)), Hardware("otherboard", ("2.0",))]
    built = build_swu(
        small,
        device.folder / "multi.swu",
        version="1.1",
        hardware=hardware,
        signer=DEV,
        compress="none",
    )
    for hw in (f"{device.board}:{device.revision}", f"{device.board}:0.9", "otherboard:2.0"):
        done = swupdate(device, built.path, hw)
        assert _accepted(done), f"{hw}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    done = swupdate(device, built.path, f"{device.board}:9.9")
    assert not _accepted(done)
    assert "SW not compatible with hardware" in done.stdout + done.stderr


def test_what_verify_refuses_swupdate_refuses(device: Device, small: Path) -> None:
    hardware = [Hardware(device.board, (device.revision,))]
    hw = f"{device.board}:{device.revision}"
    built = build_swu(small, device.folder / "s.swu", version="1.1", hardware=hardware, signer=DEV)
    assert _accepted(swupdate(device, built.path, hw))
    members = device.folder / "members"
    members.mkdir()
    _unpack(built.path, members)
    image = members / built.image
    # as refimage's kind "tampered": a zstd skippable frame first, so the stream still
    # decompresses and only the digest in sw-description can refuse it
    image.write_bytes(updates.SKIPPABLE_FRAME + image.read_bytes())
    cases: dict[str, tuple[Path, str]] = {}  # name -> (artifact, SWUpdate's reason)
    with (device.folder / "tampered.swu").open("wb") as f:
        write_archive(f, [(n, members / n) for n in (DESCRIPTION, SIGNATURE, built.image)])
    cases["tampered"] = (device.folder / "tampered.swu", f"Error streaming {built.image}")
    _unpack(built.path, members)  # the image as signed again
    with (device.folder / "unsigned.swu").open("wb") as f:
        write_archive(f, [(n, members / n) for n in (DESCRIPTION, built.image)])
    cases["unsigned"] = (device.folder / "unsigned.swu", f"instead of {SIGNATURE}")
    key, cert = device.folder / "other.key", device.folder / "other.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=another signer",
            "-days",
            "1",
            "-addext",
            "extendedKeyUsage=emailProtection",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
    )
    other = build_swu(
        small, device.folder / "o.swu", version="1.1", hardware=hardware, signer=Signer(key, cert)
    )
    cases["another signer"] = (other.path, "Signature verification failed")
    for name, (path, reason) in cases.items():
        assert verify(path, DEV.cert) != [], name
        done = swupdate(device, path, hw)
        out = done.stdout + done.stderr
        assert not _accepted(done), f"{name}: SWUpdate accepted it"
        assert "Image invalid or corrupted" in out and reason in out, f"{name}: {out[-3000:]}"
