"""Which QEMU machine boots an image: x86-64 with OVMF (GRUB), or arm64's virt with U-Boot.

Read from the image itself, so the boot tests take any image with the
twelvefactor disk contract: its ESP holds EFI/BOOT/BOOTX64.EFI (GRUB) or
boot.scr (U-Boot). U-Boot is not on the disk (QEMU loads it with -bios): it
is looked for beside the image, where the reference image's folder and a
Yocto deploy folder (`u-boot.bin`, a link to the machine's build) both keep it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from refimage import disk as disk_layout
from refimage.image import FIRMWARE_NAME

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


class BoardError(AssertionError):
    """The image is not one these tests know how to boot."""


@dataclass(frozen=True)
class Board:
    arch: str  # QEMU's name: x86_64 or aarch64
    firmware: Path  # OVMF's code, or U-Boot

    @property
    def qemu(self) -> str:
        return f"qemu-system-{self.arch}"

    @property
    def uboot(self) -> bool:
        return self.arch == "aarch64"


X86_64 = Board("x86_64", OVMF_CODE)


def esp_names(image: Path) -> set[str]:
    """The file names at the top of the image's ESP (mtools; nothing is mounted)."""
    table = disk_layout.read_table(image)
    if "esp" not in table:
        raise BoardError(f"{image}: no GPT partition named esp")
    offset = table["esp"][0]
    done = subprocess.run(
        ["mdir", "-b", "-i", f"{image}@@{offset}", "::/"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BoardError(f"{image}: the ESP cannot be read: {done.stderr.strip()}")
    return {Path(line.strip()).name for line in done.stdout.splitlines() if line.strip()}


def of_image(image: Path, firmware: Path | None = None) -> Board:
    """The board that boots `image`; U-Boot from `firmware` or beside the image."""
    names = {n.lower() for n in esp_names(image)}
    if "boot.scr" in names:
        uboot = firmware or image.parent / FIRMWARE_NAME
        if not uboot.is_file():
            raise BoardError(
                f"{image} boots with U-Boot (boot.scr on its ESP), but there is no {uboot}: "
                "put the machine's u-boot.bin beside the image"
            )
        return Board("aarch64", uboot.resolve())
    if "efi" in names:
        return X86_64
    raise BoardError(f"{image}: its ESP holds neither EFI/ nor boot.scr ({sorted(names)})")
