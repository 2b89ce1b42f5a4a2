SUMMARY = "twelvefactor device image"
DESCRIPTION = "Read-only A/B root file system for a device that talks only to its management and solution services through a WireGuard tunnel: the agent, the firewall, the tunnel configuration, SWUpdate with signed images, the data partition and the boot confirmation service."
HOMEPAGE = "https://github.com/twelvefactor/twelvefactor"
BUGTRACKER = "https://github.com/twelvefactor/twelvefactor/issues"
SECTION = "images"
LICENSE = "MIT"

inherit core-image

IMAGE_FEATURES += "read-only-rootfs"

TWELVEFACTOR_BOOT_PACKAGE ??= ""
TWELVEFACTOR_BOOT_PACKAGE:x86-64 = "twelvefactor-boot-grub"
TWELVEFACTOR_BOOT_PACKAGE:aarch64 = "twelvefactor-boot-uboot"
# fw_printenv/fw_setenv: twelvefactor-bootenv reads, sets and confirms the
# U-Boot environment with them (the agent's U-Boot back end)
TWELVEFACTOR_BOOTENV_TOOLS ??= ""
TWELVEFACTOR_BOOTENV_TOOLS:aarch64 = "libubootenv-bin"

IMAGE_INSTALL = "\
    packagegroup-core-boot \
    kernel-image \
    kernel-module-wireguard \
    ${TWELVEFACTOR_BOOT_PACKAGE} \
    ${TWELVEFACTOR_BOOTENV_TOOLS} \
    twelvefactor-base \
    twelvefactor-firewall \
    twelvefactor-netconfig \
    twelvefactor-agent \
    twelvefactor-confirm \
    swupdate \
    ${CORE_IMAGE_EXTRA_INSTALL} \
"

# A/B disk: ESP, rootfs-a, rootfs-b, data (files/wic/*.wks.in); ext4.zst for
# the full update (twelvefactor-update), and the ext4 as a zchunk file with its
# header for the delta update (twelvefactor-update-delta): the conversions of
# meta-swupdate's image_types_zchunk (`zck -u --chunk-hash-type sha256`, the
# uncompressed chunk digests SWUpdate compares with the running slot's). An
# image class, so that it comes after image_types and adds to its
# CONVERSIONTYPES. wic.bmap: the block map bmaptool writes an SD card with
# (only the blocks in use; docs/boards.md).
IMAGE_FSTYPES = "wic wic.bmap ext4.zst ext4.zck ext4.zck.zckheader"
IMAGE_CLASSES += "image_types_zchunk"
WKS_FILE = "twelvefactor-ab.wks.in"
WKS_FILE:aarch64 = "twelvefactor-ab-uboot.wks.in"
# mounts come from the layer's mount units, not from fstab lines wic would add
WIC_CREATE_EXTRA_ARGS = "--no-fstab-update"

TWELVEFACTOR_ESP_SIZE ?= "64M"
TWELVEFACTOR_ROOTFS_SIZE ?= "768M"
TWELVEFACTOR_DATA_SIZE ?= "512M"
IMAGE_ROOTFS_MAXSIZE = "786432"

# Reproducible ext4 (the slot image an update carries; docs/layer.md): oe-core's
# reproducible_final_image_task sets every mtime to REPRODUCIBLE_TIMESTAMP_ROOTFS
# (distro conf); mke2fs gets the same clock, a fixed UUID and a fixed directory
# hash seed. The UUID is fixed across releases, not per build input: with
# metadata_csum every metadata checksum is seeded by it. The values are the UUID
# v5s refimage/reproducible.py derives for DISTRO "twelvefactor", label "rootfs-a"
# (tests/unit/test_refimage_reproducible.py checks they agree). wic's own ext4
# partitions take E2FSPROGS_FAKE_TIME and a hash seed from SOURCE_DATE_EPOCH.
TWELVEFACTOR_ROOTFS_UUID ?= "cb029b56-b25a-5e44-b9f5-46534a637abf"
TWELVEFACTOR_ROOTFS_HASH_SEED ?= "fbefdf88-c92f-535e-a13b-fbf716a2f086"
# ext4 is an image type override (image_types.bbclass), which oelint does not know.
# nooelint: oelint.vars.specific
EXTRA_IMAGECMD:ext4 = "-i 4096 -U ${TWELVEFACTOR_ROOTFS_UUID} -E hash_seed=${TWELVEFACTOR_ROOTFS_HASH_SEED}"
export E2FSPROGS_FAKE_TIME = "${REPRODUCIBLE_TIMESTAMP_ROOTFS}"

IMAGE_BOOT_FILES:x86-64 = "\
    grub-efi-bootx64.efi;EFI/BOOT/bootx64.efi \
    twelvefactor/grub.cfg;EFI/BOOT/grub.cfg \
    twelvefactor/grubenv;grub/grubenv \
"
IMAGE_BOOT_FILES:qemuarm64 = "boot.scr"
# U-Boot machines: both environment copies (uboot-twelvefactor.cfg, fw_env.config);
# libubootenv refuses to work while either is missing, and U-Boot writes one per save.
IMAGE_BOOT_FILES:append:aarch64 = " twelvefactor/uboot.env;uboot.env twelvefactor/uboot.env;uboot-redund.env"
# boot.scr loads the kernel from the slot: meta-raspberrypi's copy on the ESP
# would never be updated. (oelint knows no meta-raspberrypi machine override.)
# nooelint: oelint.vars.specific
IMAGE_BOOT_FILES:remove:rpi = "${KERNEL_IMAGETYPE}"
WKS_FILE_DEPENDS:append = " ${TWELVEFACTOR_BOOT_PACKAGE}"
WKS_FILE_DEPENDS:append:x86-64 = " grub-efi"
WKS_FILE_DEPENDS:append:qemuarm64 = " u-boot"
WKS_FILE_DEPENDS:append:aarch64 = " twelvefactor-uboot-env"
