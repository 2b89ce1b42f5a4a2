"""Reproducible root file systems: the same inputs give the same ext4 image, byte for byte.

Why: a delta update (issue 14) fetches only the chunks of the new slot image
that the running slot lacks. Two releases that differ in one package must
therefore differ in little more than that package's blocks; a build that
stamps the wall clock, a random UUID or a log into the image differs
everywhere.

What varies from one build to the next, and what is done about it:

- **Times.** SOURCE_DATE_EPOCH is the layer's REPRODUCIBLE_TIMESTAMP_ROOTFS
  (meta-twelvefactor/conf/distro/twelvefactor.conf), one value shared with the
  Yocto image, never the wall clock. Every mtime in the tree is clamped to it
  (a Debian package's older file keeps its own, which is as reproducible as
  the package); mke2fs takes the superblock's and every new inode's creation
  time from E2FSPROGS_FAKE_TIME. `mke2fs -d` (1.47.0) copies each file's
  *ctime* and atime from the host, where no call can set them, so after mkfs
  every in-use inode's ctime and atime are set to SOURCE_DATE_EPOCH with
  debugfs.
- **UUID and directory hash seed.** Fixed, derived (UUID v5) from the distro
  and the file system's label, and deliberately *not* from the image's input
  key: with metadata_csum and no metadata_csum_seed (GRUB 2.06 refuses that
  feature) every inode, directory block, extent block and bitmap checksum is
  seeded by the UUID, so a UUID per release would change every metadata
  block. Slot A's image is also what an update writes to slot B, so both
  slots carry it; the root is found by PARTLABEL, never by UUID.
- **File order.** mke2fs 1.47.0 reads each directory with scandir() and
  alphasort, not in the host file system's readdir order; alphasort follows
  the collation, so mke2fs runs with LC_ALL=C.
- **Per-build noise** left by dpkg, apt, ldconfig and shadow's tools:
  logs, caches, `-old` and `-` backup files (see NOISE), and /etc/shadow's
  last-change day, which passwd and useradd write from the wall clock.
  /etc/machine-id stays empty (system.py), as the layer's image has it.
- **The rest of the disk** (image.py): the GPT's disk and partition GUIDs,
  the ESP's FAT volume id and the data file system's UUID and hash seed are
  fixed the same way, and mkfs.vfat and mtools take their times from
  SOURCE_DATE_EPOCH. Left: grub-mkstandalone stamps its memdisk's tar
  headers with the time it copied the GRUB modules, so BOOTX64.EFI differs
  from build to build (docs/refimage.md).
- **Byte code.** The agent's .pyc files are compiled with
  `--invalidation-mode checked-hash` (agent.py): they hold a hash of the
  source, not its mtime.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

from refimage import system
from refimage.progress import BuildError, run

TIMESTAMP_VARIABLE = "REPRODUCIBLE_TIMESTAMP_ROOTFS"
ROOT_INODE = 2
# A fixed namespace for the UUID v5s below (itself uuid5(NAMESPACE_DNS, ...)).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "twelvefactor.rootfs.reproducible")

# Per-build files, relative to the root, as glob patterns. The device mounts a
# tmpfs over /var, so nothing under it is read at run time; /var/lib/dpkg/status
# is kept (it lists the packages).
NOISE = (
    "var/log/**/*",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/*-old",
    "var/cache/apt/*.bin",
    "var/lib/dpkg/*-old",
    "var/lib/dpkg/available",
    "var/lib/apt/lists/*",
    "etc/passwd-",
    "etc/group-",
    "etc/shadow-",
    "etc/gshadow-",
    "etc/subuid-",
    "etc/subgid-",
)


def source_date_epoch(top: Path = system.TOP) -> int:
    """SOURCE_DATE_EPOCH for the image: the distro conf's REPRODUCIBLE_TIMESTAMP_ROOTFS."""
    value = system.distro_variables(top).get(TIMESTAMP_VARIABLE)
    if value is None:
        raise BuildError(f"{top / system.DISTRO_CONF} sets no {TIMESTAMP_VARIABLE}")
    if not value.isdigit() or int(value) <= 0:
        raise BuildError(
            f"{top / system.DISTRO_CONF}: {TIMESTAMP_VARIABLE} = {value!r} is not "
            "a positive number of seconds since 1970-01-01T00:00:00Z"
        )
    return int(value)


def fs_uuid(distro: str, label: str) -> str:
    """The file system UUID of the image labelled `label` (stable across releases)."""
    return str(uuid.uuid5(NAMESPACE, f"{distro}/{label}/uuid"))


def hash_seed(distro: str, label: str) -> str:
    """The htree directory hash seed of the image labelled `label`."""
    return str(uuid.uuid5(NAMESPACE, f"{distro}/{label}/hash_seed"))


def fat_volume_id(distro: str, label: str) -> str:
    """The FAT volume id (mkfs.vfat -i, 8 hex digits) of the file system labelled `label`."""
    return uuid.uuid5(NAMESPACE, f"{distro}/{label}/volume_id").hex[:8]


def gpt_ids(distro: str, names: list[str]) -> tuple[str, dict[str, str]]:
    """The GPT's disk GUID and each partition's unique GUID (partitions are named)."""
    label_id = str(uuid.uuid5(NAMESPACE, f"{distro}/gpt/label-id"))
    return label_id, {n: str(uuid.uuid5(NAMESPACE, f"{distro}/gpt/{n}")) for n in names}


def remove_noise(root: Path) -> list[str]:
    """Delete the per-build files in NOISE (directories are kept); returns what went."""
    gone = []
    for pattern in NOISE:
        for path in sorted(root.glob(pattern), reverse=True):
            if path.is_dir() and not path.is_symlink():
                continue
            path.unlink()
            gone.append(str(path.relative_to(root)))
    return gone


def shadow_last_change(root: Path, epoch: int) -> None:
    """Set every /etc/shadow entry's last-change day (field 3) to the epoch's day."""
    path = root / "etc/shadow"
    day = str(epoch // 86400)
    lines = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split(":")
        if len(fields) != 9:
            raise BuildError(f"{path}:{n}: {len(fields)} fields, a shadow entry has 9")
        if fields[2]:  # empty means aging is off: left so
            fields[2] = day
        lines.append(":".join(fields))
    path.write_text("\n".join(lines) + "\n")  # an existing file keeps its mode


def clamp_mtimes(root: Path, epoch: int) -> int:
    """Clamp every mtime at or below `root` to `epoch` (atime follows mtime);
    symbolic links themselves, not their targets. Returns how many changed."""
    changed = 0
    paths = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        paths += [Path(dirpath, n) for n in dirnames + filenames]
    for path in paths:
        st = os.lstat(path)
        mtime = min(st.st_mtime_ns, epoch * 1_000_000_000)
        if st.st_mtime_ns != mtime or st.st_atime_ns != mtime:
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
            changed += 1
    return changed


def mkfs_env(epoch: int) -> list[str]:
    """`env` arguments for mke2fs and debugfs: the fake clock and C collation."""
    return ["env", "LC_ALL=C", f"E2FSPROGS_FAKE_TIME={epoch}", f"SOURCE_DATE_EPOCH={epoch}"]


_GROUP = re.compile(r"^Group (\d+):")
_FREE = re.compile(r"^\s+Free inodes:\s*(.*)$")


def used_inodes(dumpe2fs_output: str) -> list[int]:
    """In-use inode numbers that mke2fs -d fills from the host (the root directory
    and every ordinary inode), from `dumpe2fs` output (its per-group free ranges)."""
    m = re.search(r"^Inodes per group:\s+(\d+)$", dumpe2fs_output, re.M)
    if m is None:
        raise BuildError("dumpe2fs printed no 'Inodes per group'")
    per_group = int(m.group(1))
    first = re.search(r"^First inode:\s+(\d+)$", dumpe2fs_output, re.M)
    # the reserved inodes below the first ordinary one keep what mke2fs wrote
    # (its fake clock); of them only the root directory is copied from the host
    first_ordinary = int(first.group(1)) if first else 11
    used: list[int] = []
    group = None
    for line in dumpe2fs_output.splitlines():
        if g := _GROUP.match(line):
            group = int(g.group(1))
        elif (f := _FREE.match(line)) and group is not None:
            start = group * per_group + 1
            free: set[int] = set()
            for part in filter(None, (p.strip() for p in f.group(1).split(","))):
                lo, _, hi = part.partition("-")
                free.update(range(int(lo), int(hi or lo) + 1))
            used += [
                i
                for i in range(start, start + per_group)
                if i not in free and (i == ROOT_INODE or i >= first_ordinary)
            ]
            group = None
    if not used:
        raise BuildError("dumpe2fs listed no group's free inodes")
    return used


def set_inode_times(image: Path, epoch: int, log: Path) -> int:
    """Set ctime and atime of every in-use inode of `image` to `epoch` (debugfs).

    mke2fs -d copies both from the host's stat, where ctime is the moment the
    file was last changed in the build tree. Returns the number of inodes."""
    listing = run([*mkfs_env(epoch), "dumpe2fs", image]).decode()
    inodes = used_inodes(listing)
    script = image.with_name(image.name + ".times")
    script.write_text(
        "".join(f"sif <{i}> ctime @{epoch}\nsif <{i}> atime @{epoch}\n" for i in inodes)
    )
    try:
        # debugfs reports a failed command on stderr and still exits 0
        done = subprocess.run(
            [*mkfs_env(epoch), "debugfs", "-w", "-f", str(script), str(image)],
            capture_output=True,
        )
    finally:
        script.unlink()
    errors = [
        line
        for line in done.stderr.decode(errors="replace").splitlines()
        if line and not line.startswith("debugfs ")
    ]
    if done.returncode != 0:
        errors.insert(0, f"exit status {done.returncode}")
    if errors:
        raise BuildError(f"debugfs on {image}: {errors[:5]}")
    with log.open("a") as f:
        f.write(f"set ctime and atime of {len(inodes)} inodes of {image} to {epoch}\n")
    return len(inodes)
