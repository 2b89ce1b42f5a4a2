"""What the reference image is made of: Debian suite, mirror and packages.

The package list is not written here: it is derived from the layer, so the
reference image installs the Debian counterparts of what the layer's image
installs and nothing else. tests/layer/image_contents.py takes the layer
image's package closure for qemux86-64 (IMAGE_INSTALL, the recipes' RDEPENDS,
what the upstream packages pull in) and maps it through
tests/layer/data/yocto-debian.toml, which gives each Yocto package its Debian
packages and the reason (plus the few tools the boot tests run on the device).
The layer tests check the table both ways.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

TOP = Path(__file__).resolve().parent.parent
LAYER_TESTS = TOP / "tests/layer"

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"


def contents() -> ModuleType:
    """tests/layer/image_contents.py (with layer_files.py beside it)."""
    if str(LAYER_TESTS) not in sys.path:
        sys.path.insert(0, str(LAYER_TESTS))
    return importlib.import_module("image_contents")


PACKAGES: tuple[str, ...] = tuple(contents().debian_packages("qemux86-64"))

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

# Documentation, manuals and translations are of no use on a device.
DPKG_EXCLUDES: tuple[str, ...] = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
