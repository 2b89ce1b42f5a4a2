"""What the reference image is made of: Debian suite, mirror and packages.

The package list is not written here: it is derived from the layer, so the
reference image installs the Debian counterparts of what the layer's image
installs and nothing else. refimage/image_contents.py takes the layer
image's package closure for qemux86-64 (IMAGE_INSTALL, the recipes' RDEPENDS,
what the upstream packages pull in) and maps it through
refimage/data/yocto-debian.toml, which gives each Yocto package its Debian
packages and the reason (plus the few tools the boot tests run on the device).
The layer tests check the table both ways.
"""

from __future__ import annotations

import fnmatch

from refimage import image_contents

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"


PACKAGES: tuple[str, ...] = tuple(image_contents.debian_packages("qemux86-64"))


def for_machine(machine: str) -> tuple[str, ...]:
    """The Debian packages of the reference image for `machine`."""
    return tuple(image_contents.debian_packages(machine))


def arch(machine: str) -> str:
    """The machine's Debian architecture (mmdebstrap --arch)."""
    return image_contents.DEBIAN_ARCH[machine]


# Modules the initramfs needs to find and mount root=PARTLABEL=... on the
# disks QEMU offers (virtio-blk, virtio-scsi, AHCI, NVMe); MODULES=list keeps
# the initramfs small (about 36 MB with Debian's default MODULES=most).
INITRAMFS_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "ext4",
    "crc32c_generic",
)
# QEMU's arm64 virt machine: U-Boot reads its environment from the disk before
# it enumerates PCI, so the disk is a virtio-mmio device there.
INITRAMFS_MODULES_ARM64: tuple[str, ...] = ("virtio_mmio",)


def initramfs_modules(machine: str) -> tuple[str, ...]:
    extra = INITRAMFS_MODULES_ARM64 if arch(machine) == "arm64" else ()
    return INITRAMFS_MODULES + extra


# Documentation, manuals and translations are of no use on a device.
DPKG_EXCLUDES: tuple[str, ...] = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)


def installed(path: str) -> bool:
    """Whether dpkg, given DPKG_EXCLUDES, installs the file `path` (absolute): the
    last filter that matches decides, and a path no filter matches is installed."""
    keep = True
    for rule in DPKG_EXCLUDES:
        kind, pattern = rule.split("=", 1)
        if fnmatch.fnmatchcase(path, pattern):
            keep = kind == "path-include"
    return keep
