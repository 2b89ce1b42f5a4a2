"""The reference-image builder's removal of build trees: it unmounts what a killed
mmdebstrap left mounted inside (its /proc) and never deletes through a mount."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import require_root, require_tool

from refimage import rootfs

ROOT = Path(__file__).resolve().parents[2]


def test_mountinfo_escapes_are_read() -> None:
    assert rootfs._unescape(r"/tmp/a\040b\011c\134d") == "/tmp/a b\tc\\d"
    assert rootfs._unescape("/plain") == "/plain"


def test_mounts_below_sees_a_real_mount_and_not_its_neighbours() -> None:
    found = rootfs.mounts_below(Path("/proc"))
    assert Path("/proc") in found
    assert all(p == Path("/proc") or Path("/proc") in p.parents for p in found)


def _mount_tmpfs(at: Path) -> None:
    subprocess.run([require_tool("mount"), "-t", "tmpfs", "tmpfs", str(at)], check=True)


def test_remove_tree_unmounts_before_deleting(tmp_path: Path) -> None:
    require_root()
    tree = tmp_path / "base" / "root"
    proc = tree / "proc"
    proc.mkdir(parents=True)
    (tree / "etc").mkdir()
    _mount_tmpfs(proc)
    # a file on the mounted file system: deleting through the mount would remove it
    (proc / "host-file").write_text("not the tree's\n")
    inner = proc / "sub"
    inner.mkdir()
    _mount_tmpfs(inner)
    try:
        rootfs.remove_tree(tmp_path / "base")
    finally:
        for point in (inner, proc):
            subprocess.run(["umount", "--lazy", str(point)], check=False, capture_output=True)
    assert not (tmp_path / "base").exists()
    assert rootfs.mounts_below(tmp_path) == []


def test_remove_tree_of_a_missing_tree_is_nothing(tmp_path: Path) -> None:
    rootfs.remove_tree(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("busy", [False, True])
def test_unmount_below_leaves_nothing_mounted(tmp_path: Path, busy: bool) -> None:
    require_root()
    proc = tmp_path / "root" / "proc"
    proc.mkdir(parents=True)
    _mount_tmpfs(proc)
    holder = None
    if busy:
        # an open file keeps the mount busy, as a chroot's process kept mmdebstrap's /proc
        holder = (proc / "held").open("w")
    try:
        rootfs.unmount_below(tmp_path / "root")
        assert rootfs.mounts_below(tmp_path) == []
    finally:
        if holder is not None:
            holder.close()
        subprocess.run(["umount", "--lazy", str(proc)], check=False, capture_output=True)
