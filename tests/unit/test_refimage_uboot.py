"""The arm64 reference image's U-Boot (refimage/uboot.py) and how the boot tests tell
the two boards apart (testbed/boot/board.py): the parts that need no build."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import require_tool

from refimage import disk, uboot
from refimage import layer_files as lf
from refimage.progress import BuildError
from testbed.boot import board

SOURCES = """\
Package: u-boot
Binary: u-boot, u-boot-qemu, u-boot-tools
Version: 2025.01-3+deb13u1
Directory: pool/main/u/u-boot
Checksums-Sha256:
 21dbfd7fe193b127636814284b1093 4329 u-boot_2025.01-3+deb13u1.dsc
 cdef7d507c93f1bbd9f015ea9bc21f 32890299 u-boot_2025.01.orig.tar.bz2
 c73a4efe85614af359f0be220e061a 174476 u-boot_2025.01-3+deb13u1.debian.tar.xz

Package: u-boot
Version: 2024.01+dfsg-1
Directory: pool/main/u/u-boot-old
Checksums-Sha256:
 00 1 u-boot_2024.01.orig.tar.bz2
"""


def test_the_first_source_stanza_gives_version_folder_and_digests() -> None:
    version, folder, sums = uboot._source_files(SOURCES)
    assert (version, folder) == ("2025.01-3+deb13u1", "pool/main/u/u-boot")
    assert sums["u-boot_2025.01.orig.tar.bz2"].startswith("cdef7d50")
    assert sorted(sums) == [
        "u-boot_2025.01-3+deb13u1.debian.tar.xz",
        "u-boot_2025.01-3+deb13u1.dsc",
        "u-boot_2025.01.orig.tar.bz2",
    ]


def test_a_sources_index_without_the_package_is_an_error() -> None:
    with pytest.raises(BuildError, match="no usable source package"):
        uboot._source_files("Package: other\n")


def test_fragment_options_are_asked_under_the_older_uboots_names() -> None:
    wanted = uboot.wanted_options()
    # the layer names wrynose's option; the suite's U-Boot (2025.01) knows the old name
    assert "CONFIG_ENV_REDUNDANT" not in wanted
    assert wanted["CONFIG_SYS_REDUNDAND_ENVIRONMENT"] == "y"
    assert wanted["CONFIG_BOOTCOUNT_LIMIT"] == "y"
    assert wanted["CONFIG_ENV_IS_IN_FLASH"] == "n"  # "# ... is not set"
    assert wanted["CONFIG_ENV_FAT_INTERFACE"] == '"virtio"'
    names = [f.name for f in uboot.fragments()]
    assert names == ["uboot-twelvefactor.cfg", "uboot-env-virtio.cfg"]


def test_an_option_that_did_not_take_is_reported_with_what_it_became() -> None:
    config = uboot.parse_config(
        "CONFIG_BOOTCOUNT_LIMIT=y\n# CONFIG_ENV_IS_IN_FLASH is not set\nCONFIG_ENV_SIZE=0x40000\n"
    )
    wanted = {
        "CONFIG_BOOTCOUNT_LIMIT": "y",
        "CONFIG_ENV_IS_IN_FLASH": "n",
        "CONFIG_ENV_SIZE": "0x4000",
        "CONFIG_BOOTCOUNT_ENV": "y",  # absent: Kconfig dropped it
        "CONFIG_ENV_IS_NOWHERE": "n",  # absent, and not wanted: fine
    }
    assert uboot.missing_options(wanted, config) == {
        "CONFIG_ENV_SIZE": "0x40000",
        "CONFIG_BOOTCOUNT_ENV": "n",
    }


def test_the_esp_is_filled_as_the_image_recipe_says() -> None:
    # boot.scr and both environment copies, from the two files the recipes deploy
    assert lf.image_boot_files("qemuarm64") == [
        "boot.scr",
        "twelvefactor/uboot.env;uboot.env",
        "twelvefactor/uboot.env;uboot-redund.env",
    ]
    assert all(path.is_file() for path in uboot.inputs())


def _disk_with_esp(tmp_path: Path, files: dict[str, Path]) -> Path:
    for tool in ("sfdisk", "mkfs.vfat", "mcopy", "mmd", "mdir"):
        require_tool(tool)
    # FAT32 (make_esp) needs about 33 MiB at least
    layout = (disk.Partition("esp", 40, disk.ESP_TYPE), disk.Partition("data", 1, disk.LINUX_TYPE))
    image = tmp_path / "disk.img"
    disk.partition_table(image, layout)
    esp = tmp_path / "esp.vfat"
    disk.make_esp(esp, 40 * disk.MIB, files, tmp_path / "esp.log")
    disk.write_into(image, esp, *disk.offsets(layout)["esp"])
    return image


def test_a_grub_image_boots_on_x86_64_with_ovmf(tmp_path: Path) -> None:
    efi = tmp_path / "BOOTX64.EFI"
    efi.write_bytes(b"MZ")
    image = _disk_with_esp(tmp_path, {"EFI/BOOT/BOOTX64.EFI": efi})
    assert board.of_image(image) == board.X86_64


def test_a_uboot_image_boots_on_arm64_with_the_uboot_beside_it(tmp_path: Path) -> None:
    script = tmp_path / "boot.scr"
    script.write_bytes(b"'V")
    image = _disk_with_esp(tmp_path, {"boot.scr": script})
    with pytest.raises(board.BoardError, match=r"u-boot\.bin beside the image"):
        board.of_image(image)
    (tmp_path / "u-boot.bin").write_bytes(b"\0")
    found = board.of_image(image)
    assert (found.arch, found.firmware, found.qemu) == (
        "aarch64",
        tmp_path / "u-boot.bin",
        "qemu-system-aarch64",
    )


def test_an_image_with_neither_bootloader_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "readme.txt"
    other.write_text("no bootloader\n")
    image = _disk_with_esp(tmp_path, {"readme.txt": other})
    with pytest.raises(board.BoardError, match=r"neither EFI/ nor boot\.scr"):
        board.of_image(image)
