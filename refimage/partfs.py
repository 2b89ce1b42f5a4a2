"""Read files from an ext4 partition of a disk image without mounting it (debugfs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from refimage import disk
from refimage.progress import BuildError


def _spec(image: Path, partition: str) -> str:
    offset, _ = disk.read_table(image)[partition]
    # debugfs passes "?offset=N" to its I/O manager: the file system starts there
    return f"{image}?offset={offset}"


def read(image: Path, partition: str, path: str) -> bytes:
    """Bytes of `path` in the ext4 file system of `partition` (a GPT name)."""
    if "\n" in path or '"' in path:
        raise BuildError(f"unusable path {path!r}")
    spec = _spec(image, partition)
    stat = subprocess.run(
        ["debugfs", "-R", f'stat "{path}"', spec], capture_output=True, text=True, check=False
    )
    if "Type: regular" not in stat.stdout:
        what = "not found" if "not found" in stat.stderr else "not a regular file"
        raise FileNotFoundError(f"{path} in {partition} of {image}: {what}")
    cat = ["debugfs", "-R", f'cat "{path}"', spec]
    done = subprocess.run(cat, capture_output=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"debugfs cat {path}: {done.stderr.decode(errors='replace')}")
    return done.stdout


def read_text(image: Path, partition: str, path: str) -> str:
    return read(image, partition, path).decode()


def account_ids(image: Path, name: str, partition: str = "rootfs-a") -> tuple[int, int]:
    """(uid, gid) of a user in the image's /etc/passwd."""
    for line in read_text(image, partition, "/etc/passwd").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise BuildError(f"user {name!r} is not in /etc/passwd of {partition} in {image}")


def group_id(image: Path, name: str, partition: str = "rootfs-a") -> int:
    """gid of a group in the image's /etc/group."""
    for line in read_text(image, partition, "/etc/group").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name:
            return int(fields[2])
    raise BuildError(f"group {name!r} is not in /etc/group of {partition} in {image}")


def mode(image: Path, partition: str, path: str) -> int:
    """Permission bits of `path` (debugfs stat)."""
    spec = _spec(image, partition)
    stat = subprocess.run(
        ["debugfs", "-R", f'stat "{path}"', spec], capture_output=True, text=True, check=False
    )
    for line in stat.stdout.splitlines():
        if "Mode:" in line:
            return int(line.split("Mode:")[1].split()[0], 8) & 0o7777
    raise FileNotFoundError(f"{path} in {partition} of {image}: {stat.stderr.strip()}")


def dump_tree(image: Path, partition: str, path: str, dest: Path) -> Path:
    """Copy the directory `path` (with its symlinks) out of the partition into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["debugfs", "-R", f'rdump "{path}" "{dest}"', _spec(image, partition)],
        capture_output=True,
        text=True,
        check=False,
    )
    out = dest / Path(path).name
    if done.returncode != 0 or not out.is_dir():
        raise BuildError(f"debugfs rdump {path}: {done.stderr.strip()}")
    return out


def read_fat(image: Path, partition: str, path: str) -> bytes:
    """Bytes of `path` in the FAT file system of `partition` (mtools, image@@offset)."""
    offset, _ = disk.read_table(image)[partition]
    done = subprocess.run(
        ["mcopy", "-n", "-i", f"{image}@@{offset}", f"::{path}", "-"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise FileNotFoundError(f"{path} in {partition} of {image}: {done.stderr.decode().strip()}")
    return done.stdout
