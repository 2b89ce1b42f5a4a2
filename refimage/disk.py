"""GPT disk assembly without mounting anything.

File systems are created from directories (`mkfs.ext4 -d`; mkfs.vfat plus
mtools for the ESP), then copied into a sparse disk file at their partition
offsets with `dd conv=notrunc,sparse`; sfdisk writes the partition table.
The host kernel here has no vfat and `losetup -P` makes no partition devices.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from refimage import reproducible
from refimage.progress import BuildError, run

MIB = 1024 * 1024
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


@dataclass(frozen=True)
class Partition:
    """One GPT partition: its name is also its file-system label."""

    name: str
    size_mib: int
    type_uuid: str


# Names and labels are fixed decisions shared with the layer's wic layout,
# grub.cfg (search by label) and the kernel command line (root=PARTLABEL=).
LAYOUT: tuple[Partition, ...] = (
    Partition("esp", 64, ESP_TYPE),
    Partition("rootfs-a", 768, LINUX_TYPE),
    Partition("rootfs-b", 768, LINUX_TYPE),
    Partition("data", 512, LINUX_TYPE),  # TWELVEFACTOR_DATA_SIZE, as the layer
)
FIRST_MIB = 1  # first partition starts at 1 MiB
BACKUP_GPT_MIB = 1  # room for the backup GPT at the end


def offsets(layout: tuple[Partition, ...] = LAYOUT) -> dict[str, tuple[int, int]]:
    """Partition name -> (offset in bytes, size in bytes)."""
    out: dict[str, tuple[int, int]] = {}
    start = FIRST_MIB
    for part in layout:
        out[part.name] = (start * MIB, part.size_mib * MIB)
        start += part.size_mib
    return out


def disk_size(layout: tuple[Partition, ...] = LAYOUT) -> int:
    return (FIRST_MIB + sum(p.size_mib for p in layout) + BACKUP_GPT_MIB) * MIB


@dataclass(frozen=True)
class Reproducible:
    """What makes mke2fs's output the same for the same tree (refimage/reproducible.py)."""

    epoch: int  # SOURCE_DATE_EPOCH: superblock and inode times
    uuid: str
    hash_seed: str


def make_ext4(
    src: Path | None,
    out: Path,
    label: str,
    size: int,
    log: Path,
    fixed: Reproducible | None = None,
) -> None:
    """An ext4 image of `size` bytes holding the tree `src` (or empty).

    With `fixed`, the image is reproducible: fixed UUID, hash seed and clock,
    C collation for mke2fs's sorted directory reads, and every inode's ctime
    and atime set to the epoch afterwards (mke2fs -d copies the host's)."""
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate(size)
    extended = "root_owner=0:0"
    argv: list[str | Path] = []
    if fixed is not None:
        argv += reproducible.mkfs_env(fixed.epoch)
        extended += f",hash_seed={fixed.hash_seed}"
    argv += [
        "mkfs.ext4",
        "-q",
        "-F",
        "-L",
        label,
        # GRUB 2.06's ext2 driver refuses the metadata_csum_seed incompat feature.
        "-O",
        "^metadata_csum_seed",
        "-E",
        extended,
    ]
    if fixed is not None:
        argv += ["-U", fixed.uuid]
    if src is not None:
        argv += ["-d", src]
    argv += [out]
    run(argv, log=log)
    if fixed is not None:
        reproducible.set_inode_times(out, fixed.epoch, log)


def make_esp(
    out: Path,
    size: int,
    files: dict[str, Path],
    log: Path,
    fixed: tuple[int, str] | None = None,
) -> None:
    """A FAT ESP labelled 'esp' holding `files` (ESP path -> host file).

    With `fixed` (SOURCE_DATE_EPOCH, volume id): that volume id, and every
    time mkfs.vfat and mtools write taken from SOURCE_DATE_EPOCH."""
    out.unlink(missing_ok=True)
    env: list[str] = []
    volume: list[str] = []
    if fixed is not None:
        env = ["env", f"SOURCE_DATE_EPOCH={fixed[0]}"]
        volume = ["-i", fixed[1]]
    run(
        [*env, "mkfs.vfat", "-F", "32", "-n", "esp", *volume, "-C", out, str(size // 1024)], log=log
    )
    dirs: set[str] = set()
    for dest in files:
        parts = dest.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    for d in sorted(dirs, key=lambda p: p.count("/")):
        run([*env, "mmd", "-i", out, f"::/{d}"], log=log)
    for dest, src in files.items():
        run([*env, "mcopy", "-o", "-i", out, src, f"::/{dest.strip('/')}"], log=log)


def write_into(disk: Path, image: Path, offset: int, size: int) -> None:
    """Copy a file-system image into the disk file at `offset`, sparsely."""
    if image.stat().st_size > size:
        raise BuildError(f"{image} ({image.stat().st_size} bytes) exceeds its partition ({size})")
    # Zero the partition first: conv=sparse skips zero blocks, which must not
    # leave an older file system's bytes (a stale journal) behind.
    run(["fallocate", "--punch-hole", f"--offset={offset}", f"--length={size}", disk])
    run(
        [
            "dd",
            f"if={image}",
            f"of={disk}",
            "bs=1M",
            f"seek={offset}",
            "oflag=seek_bytes",
            "conv=notrunc,sparse",
            "status=none",
        ]
    )


def partition_table(
    disk: Path,
    layout: tuple[Partition, ...] = LAYOUT,
    ids: tuple[str, dict[str, str]] | None = None,
) -> None:
    """A new sparse disk file with a GPT holding `layout`.

    With `ids` (disk GUID, partition name -> GUID) the GUIDs are those, not random."""
    disk.unlink(missing_ok=True)
    with disk.open("wb") as f:
        f.truncate(disk_size(layout))
    script = "label: gpt\nunit: sectors\n"
    if ids is not None:
        script += f"label-id: {ids[0]}\n"
    for part in layout:
        offset, size = offsets(layout)[part.name]
        guid = f", uuid={ids[1][part.name]}" if ids is not None else ""
        script += (
            f"start={offset // 512}, size={size // 512}, type={part.type_uuid}, "
            f"name={part.name}{guid}\n"
        )
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", disk], input_bytes=script.encode())


def read_table(disk: Path) -> dict[str, tuple[int, int]]:
    """Partition name -> (offset, size) in bytes, read from the disk's GPT."""
    raw = run(["sfdisk", "--json", disk])
    table = json.loads(raw)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    out: dict[str, tuple[int, int]] = {}
    for p in table["partitions"]:
        if "name" in p:
            out[p["name"]] = (int(p["start"]) * sector, int(p["size"]) * sector)
    return out


def extract(disk: Path, name: str, out: Path) -> None:
    """Copy one partition of the disk into its own file (sparse)."""
    offset, size = read_table(disk)[name]
    run(
        [
            "dd",
            f"if={disk}",
            f"of={out}",
            "bs=1M",
            f"skip={offset}",
            f"count={size}",
            "iflag=skip_bytes,count_bytes",
            "conv=sparse",
            "status=none",
        ]
    )
    os.truncate(out, size)
