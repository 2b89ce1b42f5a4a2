"""The machines the reference image is built for, and what differs between them.

Each is a Yocto MACHINE the layer supports, built here from the Debian
architecture image_contents.DEBIAN_ARCH gives it: qemux86-64 boots with GRUB
(EFI, OVMF in QEMU), qemuarm64 with U-Boot (QEMU's virt machine).
"""

from __future__ import annotations

from dataclasses import dataclass

from refimage.progress import BuildError


@dataclass(frozen=True)
class Machine:
    name: str  # Yocto's MACHINE
    bootloader: str  # "grub" or "uboot": the layer's boot package for the machine
    kernel: str  # the file in the slot's /boot the bootloader's script loads


MACHINES = {
    "qemux86-64": Machine("qemux86-64", "grub", "bzImage"),
    # KERNEL_IMAGETYPE of qemuarm64: the uncompressed Image booti takes
    "qemuarm64": Machine("qemuarm64", "uboot", "Image"),
}
DEFAULT = "qemux86-64"


def get(name: str) -> Machine:
    try:
        return MACHINES[name]
    except KeyError:
        raise BuildError(
            f"no reference image for machine {name!r} (one of {', '.join(MACHINES)})"
        ) from None
