SUMMARY = "twelvefactor U-Boot environment for both copies on the ESP"
DESCRIPTION = "The U-Boot environment a freshly flashed device starts with: U-Boot's built-in environment with the twelvefactor A/B variables (slot, boot counter, altbootcmd), in U-Boot's redundant format. The image puts it on the ESP twice, as uboot.env and uboot-redund.env: libubootenv (fw_setenv, SWUpdate) refuses to work while either copy is missing, and U-Boot writes one copy per save."
HOMEPAGE = "https://github.com/twelvefactor/twelvefactor"
BUGTRACKER = "https://github.com/twelvefactor/twelvefactor/issues"
SECTION = "bootloaders"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

DEPENDS = "u-boot-mkenvimage-native"

SRC_URI = "\
    file://uboot-ab.env \
    file://twelvefactor-uboot-envimage \
"

S = "${UNPACKDIR}"

COMPATIBLE_HOST = "(aarch64|arm).*-linux"
# built from this machine's U-Boot environment
PACKAGE_ARCH = "${MACHINE_ARCH}"

inherit deploy nopackages

# CONFIG_ENV_SIZE of uboot-twelvefactor.cfg, and the size in fw_env.config
TWELVEFACTOR_UBOOT_ENV_SIZE = "0x4000"
# Device-tree overlays boot.cmd applies from the slot's /boot/overlays, by name
# (for example "disable-bt"). The firmware applies config.txt's dtoverlay lines
# only to its own tree, which the slot's kernel does not boot with.
TWELVEFACTOR_DTOVERLAYS ??= ""

do_compile[depends] += "u-boot:do_deploy"
do_compile() {
    set --
    if [ -n "${TWELVEFACTOR_DTOVERLAYS}" ]; then
        set -- "tf_dtoverlays=${TWELVEFACTOR_DTOVERLAYS}"
    fi
    MKENVIMAGE=uboot-mkenvimage sh ${UNPACKDIR}/twelvefactor-uboot-envimage \
        ${DEPLOY_DIR_IMAGE}/u-boot-initial-env ${UNPACKDIR}/uboot-ab.env \
        ${TWELVEFACTOR_UBOOT_ENV_SIZE} ${B}/uboot.env "$@"
}

do_deploy() {
    install -d ${DEPLOYDIR}/twelvefactor
    install -m 0644 ${B}/uboot.env ${DEPLOYDIR}/twelvefactor/uboot.env
}
addtask deploy after do_compile before do_build
