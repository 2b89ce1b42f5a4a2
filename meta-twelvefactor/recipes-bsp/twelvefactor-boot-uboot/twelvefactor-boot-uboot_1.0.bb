SUMMARY = "twelvefactor A/B boot script for U-Boot and the fw_env.config for libubootenv"
DESCRIPTION = "boot.scr that boots the root file system slot named in the U-Boot environment, with that slot's kernel and device tree (U-Boot's boot counter, and an altbootcmd that records the slot it falls back from and switches to the other), and /etc/fw_env.config pointing fw_setenv and SWUpdate at the two redundant environment copies on the EFI system partition (twelvefactor-uboot-env writes both at image time)."
HOMEPAGE = "https://github.com/twelvefactor/twelvefactor"
BUGTRACKER = "https://github.com/twelvefactor/twelvefactor/issues"
SECTION = "bootloaders"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

DEPENDS = "u-boot-mkimage-native"

# meta-raspberrypi takes its boot.scr from this provider (PREFERRED_PROVIDER
# in kas/raspberrypi4-64.yml).
PROVIDES += "u-boot-default-script"

SRC_URI = "\
    file://boot.cmd \
    file://fw_env.config \
"

S = "${UNPACKDIR}"

COMPATIBLE_HOST = "(aarch64|arm).*-linux"
# machine-specific run-time dependencies below
PACKAGE_ARCH = "${MACHINE_ARCH}"

inherit deploy kernel-arch

do_compile() {
    mkimage -A ${UBOOT_ARCH} -T script -C none -n "twelvefactor A/B" -d ${UNPACKDIR}/boot.cmd ${B}/boot.scr
}

do_install() {
    install -d ${D}${sysconfdir}
    install -m 0644 ${UNPACKDIR}/fw_env.config ${D}${sysconfdir}/fw_env.config
    install -d ${D}${datadir}/twelvefactor/boot
    install -m 0644 ${UNPACKDIR}/boot.cmd ${D}${datadir}/twelvefactor/boot/boot.cmd
}

do_deploy() {
    install -d ${DEPLOYDIR}
    install -m 0644 ${B}/boot.scr ${DEPLOYDIR}/boot.scr
}
addtask deploy after do_compile before do_build

FILES:${PN} += "${sysconfdir}/fw_env.config ${datadir}/twelvefactor/boot"
CONFFILES:${PN} = "${sysconfdir}/fw_env.config"

# boot.scr loads the device tree from the slot (/boot/broadcom/*.dtb and
# /boot/overlays/*.dtbo, KERNEL_DTBVENDORED in the kernel's append), so that a
# kernel update brings its device tree; QEMU passes its own. (oelint knows no
# meta-raspberrypi machine override.)
# nooelint: oelint.vars.specific
RDEPENDS:${PN}:append:rpi = " kernel-devicetree"
