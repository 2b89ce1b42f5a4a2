"""The size of the ext4 image an update carries, as oe-core sizes it.

The Yocto build puts `twelvefactor-image-<machine>.rootfs.ext4.zst` in the
.swu: an ext4 image sized from its content by image.bbclass's
get_rootfs_size(), not the slot's partition (wic's `--fixed-size` sizes only
the partitions of the .wic). SWUpdate's raw handler writes the image's bytes
and nothing more, so the slot's file system is that size. The update kinds of
the reference image (refimage/updates.py) start from rootfs-a copied out of
the disk, which fills its partition; this shrinks it the same way, so that an
install here writes as many bytes as the Yocto artifact's would, not the
whole partition (under TCG every byte written is also decompressed and
hashed twice: SWUpdate's dry run, then the install).

get_rootfs_size(): the root tree's `du -ks` times IMAGE_OVERHEAD_FACTOR, at
least IMAGE_ROOTFS_SIZE, plus IMAGE_ROOTFS_EXTRA_SPACE, rounded up to
IMAGE_ROOTFS_ALIGNMENT, refused above IMAGE_ROOTFS_MAXSIZE. The tree is not at
hand here, so its size is the file system's used blocks (file data plus
ext4's own metadata and journal: a little more than `du`, never less).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from refimage.progress import BuildError, run

# oe-core's defaults (meta/conf/bitbake.conf, image.bbclass), in KiB; the
# layer's image recipe sets only IMAGE_ROOTFS_MAXSIZE (twelvefactor-image.bb).
OVERHEAD_FACTOR = 1.3
ROOTFS_SIZE_KIB = 65536
EXTRA_SPACE_KIB = 0
ALIGNMENT_KIB = 1
MAXSIZE_KIB = 786432


def oe_rootfs_kib(used_kib: int) -> int:
    """get_rootfs_size() for a tree of `used_kib` KiB."""
    if used_kib < 0:
        raise ValueError(f"negative size {used_kib} KiB")
    size = math.ceil(max(used_kib * OVERHEAD_FACTOR, ROOTFS_SIZE_KIB) + EXTRA_SPACE_KIB)
    size += ALIGNMENT_KIB - 1
    size -= size % ALIGNMENT_KIB
    if size > MAXSIZE_KIB:
        raise BuildError(
            f"the root file system needs {size} KiB, over IMAGE_ROOTFS_MAXSIZE ({MAXSIZE_KIB} KiB)"
        )
    return size


def used_kib(fs: Path) -> int:
    """KiB in use in the ext4 image `fs` (its superblock's counts)."""
    header = run(["dumpe2fs", "-h", fs]).decode()
    fields = dict(re.findall(r"^([A-Za-z ]+):\s+(\d+)\s*$", header, re.MULTILINE))
    try:
        count, free = int(fields["Block count"]), int(fields["Free blocks"])
        block = int(fields["Block size"])
    except KeyError as missing:
        raise BuildError(f"dumpe2fs -h {fs}: no {missing} in its answer") from None
    return (count - free) * block // 1024


def shrink_like_oe(fs: Path) -> int:
    """Resize the ext4 image `fs` (and its file) to oe-core's size; returns KiB."""
    target = oe_rootfs_kib(used_kib(fs))
    # resize2fs wants a freshly checked file system; -f: the image was only ever
    # written by mkfs and debugfs, -p: repair nothing silently (a fault is an error)
    run(["e2fsck", "-f", "-p", fs])
    run(["resize2fs", fs, f"{target}K"])
    # resize2fs stops at the last whole block; oe-core's file is the KiB it
    # asked for (dd seek=SIZE bs=1024, then mkfs.ext4), so the same here
    size = fs.stat().st_size
    if not target * 1024 - 4096 < size <= target * 1024:
        raise BuildError(f"resize2fs left {fs} at {size} bytes, not about {target} KiB")
    os.truncate(fs, target * 1024)
    return target
