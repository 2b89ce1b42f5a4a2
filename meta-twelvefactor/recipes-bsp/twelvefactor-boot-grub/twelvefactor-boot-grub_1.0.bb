SUMMARY = "twelvefactor A/B boot script for GRUB (EFI) and its initial environment"
DESCRIPTION = "grub.cfg that picks the root file system slot from the GRUB environment block on the EFI system partition, counts boot attempts of a new slot and falls back after bootlimit attempts; the initial 1024-byte grubenv."
HOMEPAGE = "https://github.com/twelvefactor/twelvefactor"
BUGTRACKER = "https://github.com/twelvefactor/twelvefactor/issues"
SECTION = "bootloaders"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://grub.cfg \
    file://grubenv \
"

S = "${UNPACKDIR}"

COMPATIBLE_HOST = "(x86_64|i.86).*-linux"

inherit deploy

# The ESP gets these files from the deploy folder (IMAGE_BOOT_FILES); the copy
# in the root file system documents what a slot expects of its bootloader.
do_install() {
    install -d ${D}${datadir}/twelvefactor/boot
    install -m 0644 ${UNPACKDIR}/grub.cfg ${D}${datadir}/twelvefactor/boot/grub.cfg
    install -m 0644 ${UNPACKDIR}/grubenv ${D}${datadir}/twelvefactor/boot/grubenv
}

do_deploy() {
    install -d ${DEPLOYDIR}/twelvefactor
    install -m 0644 ${UNPACKDIR}/grub.cfg ${DEPLOYDIR}/twelvefactor/grub.cfg
    install -m 0644 ${UNPACKDIR}/grubenv ${DEPLOYDIR}/twelvefactor/grubenv
}
addtask deploy after do_install before do_build

FILES:${PN} += "${datadir}/twelvefactor/boot"
