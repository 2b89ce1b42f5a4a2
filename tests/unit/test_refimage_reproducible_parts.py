"""The reproducible root file system's pure parts (refimage/reproducible.py): where
SOURCE_DATE_EPOCH comes from, the fixed UUID and hash seed and the layer's copy
of them, the in-use inode list read from dumpe2fs, /etc/shadow's last-change
day, the noise removal and the mtime clamp."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from refimage import image, reproducible, system
from refimage.progress import BuildError

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "meta-twelvefactor/recipes-core/images/twelvefactor-image.bb"

# dumpe2fs 1.47.0's format: the header, then one block per group
DUMPE2FS = """\
Filesystem volume name:   rootfs-a
Inode count:              12288
Inodes per group:         4096
First inode:              11
Group 0: (Blocks 0-32767) csum 0x0fb1 [ITABLE_ZEROED]
  Primary superblock at 0, Group descriptors at 1-1
  Free inodes: 12, 15-4096
Group 1: (Blocks 32768-65535) csum 0x6e42 [ITABLE_ZEROED]
  Free inodes: 4097-4099, 4101-8192
Group 2: (Blocks 65536-98303) csum 0x1be0 [INODE_UNINIT, ITABLE_ZEROED]
  Free inodes: 8193-12288
"""


def _top_with(tmp_path: Path, line: str) -> Path:
    conf = tmp_path / system.DISTRO_CONF
    conf.parent.mkdir(parents=True)
    conf.write_text(f'DISTRO = "twelvefactor"\n{line}\n')
    return tmp_path


def test_epoch_is_the_distro_confs_reproducible_timestamp() -> None:
    values = system.distro_variables(ROOT)
    assert reproducible.source_date_epoch(ROOT) == int(values["REPRODUCIBLE_TIMESTAMP_ROOTFS"])


def test_epoch_missing_or_malformed_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="sets no REPRODUCIBLE_TIMESTAMP_ROOTFS"):
        reproducible.source_date_epoch(_top_with(tmp_path / "a", "# none"))
    for bad in ("2026-12-01", "0", "-5", ""):
        top = _top_with(tmp_path / f"b{bad}", f'REPRODUCIBLE_TIMESTAMP_ROOTFS = "{bad}"')
        with pytest.raises(BuildError, match="is not a positive number of seconds"):
            reproducible.source_date_epoch(top)


def test_uuid_and_seed_are_fixed_per_label_and_differ() -> None:
    a = reproducible.fs_uuid("twelvefactor", "rootfs-a")
    assert a == reproducible.fs_uuid("twelvefactor", "rootfs-a")
    assert a != reproducible.fs_uuid("twelvefactor", "data")
    assert a != reproducible.hash_seed("twelvefactor", "rootfs-a")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", a)


def test_the_layers_ext4_uses_the_same_uuid_seed_and_clock() -> None:
    text = RECIPE.read_text()
    fixed = image.rootfs_settings(ROOT)
    assert re.search(rf'^TWELVEFACTOR_ROOTFS_UUID \?= "{fixed.uuid}"$', text, re.M)
    assert re.search(rf'^TWELVEFACTOR_ROOTFS_HASH_SEED \?= "{fixed.hash_seed}"$', text, re.M)
    cmd = re.search(r'^EXTRA_IMAGECMD:ext4 = "(.*)"$', text, re.M)
    assert cmd is not None
    assert cmd.group(1).split() == [
        "-i",
        "4096",  # oe-core's default, kept
        "-U",
        "${TWELVEFACTOR_ROOTFS_UUID}",
        "-E",
        "hash_seed=${TWELVEFACTOR_ROOTFS_HASH_SEED}",
    ]
    assert re.search(
        r'^export E2FSPROGS_FAKE_TIME = "\$\{REPRODUCIBLE_TIMESTAMP_ROOTFS\}"$', text, re.M
    )


def test_used_inodes_are_the_complement_of_the_free_ranges() -> None:
    used = reproducible.used_inodes(DUMPE2FS)
    assert used == [2, 11, 13, 14, 4100]  # reserved 1, 3-10 are mke2fs's own


def test_used_inodes_refuses_output_it_cannot_read() -> None:
    with pytest.raises(BuildError, match="Inodes per group"):
        reproducible.used_inodes("Group 0: (Blocks 0-1)\n  Free inodes: 1-10\n")
    with pytest.raises(BuildError, match="no group's free inodes"):
        reproducible.used_inodes("Inodes per group: 10\n")


def test_shadow_last_change_day_comes_from_the_epoch(tmp_path: Path) -> None:
    shadow = tmp_path / "etc/shadow"
    shadow.parent.mkdir()
    shadow.write_text("root::20790:0:99999:7:::\nnobody:*::0:99999:7:::\n")
    shadow.chmod(0o640)
    reproducible.shadow_last_change(tmp_path, 1796083200)  # day 20788
    assert shadow.read_text() == "root::20788:0:99999:7:::\nnobody:*::0:99999:7:::\n"
    assert shadow.stat().st_mode & 0o777 == 0o640
    shadow.write_text("root:x:1\n")
    with pytest.raises(BuildError, match=r"shadow:1: 3 fields"):
        reproducible.shadow_last_change(tmp_path, 1796083200)


def test_noise_goes_and_what_the_image_needs_stays(tmp_path: Path) -> None:
    keep = ["var/lib/dpkg/status", "etc/passwd", "etc/shadow", "var/log/journal/"]
    drop = [
        "var/log/dpkg.log",
        "var/log/apt/history.log",
        "var/lib/dpkg/status-old",
        "etc/shadow-",
        "var/cache/ldconfig/aux-cache",
    ]
    for rel in keep + drop:
        path = tmp_path / rel
        if rel.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rel)
    gone = reproducible.remove_noise(tmp_path)
    assert sorted(gone) == sorted(drop)
    assert all((tmp_path / rel).exists() for rel in keep)
    assert (tmp_path / "var/log/apt").is_dir()


def test_mtimes_are_clamped_and_older_ones_kept(tmp_path: Path) -> None:
    epoch = 1796083200
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text("o")
    new.write_text("n")
    os.utime(old, (epoch - 500, epoch - 1000))
    os.utime(new, (epoch + 9, epoch + 10))
    link = tmp_path / "link"
    link.symlink_to("old")
    reproducible.clamp_mtimes(tmp_path, epoch)
    assert old.stat().st_mtime == epoch - 1000
    assert old.stat().st_atime == epoch - 1000
    assert new.stat().st_mtime == epoch
    assert os.lstat(link).st_mtime <= epoch
    assert tmp_path.stat().st_mtime == epoch
