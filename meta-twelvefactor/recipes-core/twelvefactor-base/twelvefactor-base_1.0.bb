SUMMARY = "twelvefactor partitions: persistent /data and the EFI system partition on /boot"
DESCRIPTION = "Mount units for the data partition (ext4, label data) on /data and the EFI system partition (FAT, label esp) on /boot, where the bootloader environment lives, plus the empty mount point /data in the read-only root; the machine id kept on /data; a device timeout long enough for a slow coldplug."
HOMEPAGE = "https://github.com/twelvefactor/twelvefactor"
BUGTRACKER = "https://github.com/twelvefactor/twelvefactor/issues"
SECTION = "base"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://data.mount \
    file://boot.mount \
    file://twelvefactor-machine-id \
    file://twelvefactor-machine-id.service \
    file://10-twelvefactor-device-timeout.conf \
"

S = "${UNPACKDIR}"

inherit systemd features_check allarch

REQUIRED_DISTRO_FEATURES = "systemd"

SYSTEMD_SERVICE:${PN} = "data.mount boot.mount twelvefactor-machine-id.service"

do_install() {
    install -d ${D}/data
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${UNPACKDIR}/data.mount ${D}${systemd_system_unitdir}/data.mount
    install -m 0644 ${UNPACKDIR}/boot.mount ${D}${systemd_system_unitdir}/boot.mount
    install -m 0644 ${UNPACKDIR}/twelvefactor-machine-id.service ${D}${systemd_system_unitdir}/twelvefactor-machine-id.service
    install -d ${D}${systemd_unitdir}/system.conf.d
    install -m 0644 ${UNPACKDIR}/10-twelvefactor-device-timeout.conf ${D}${systemd_unitdir}/system.conf.d/10-twelvefactor-device-timeout.conf
    install -d ${D}${libexecdir}/twelvefactor
    install -m 0755 ${UNPACKDIR}/twelvefactor-machine-id ${D}${libexecdir}/twelvefactor/twelvefactor-machine-id
}

FILES:${PN} += "/data ${systemd_unitdir}/system.conf.d"

# data.mount and boot.mount require systemd-fsck@ for their partitions, which
# checks nothing (and says so) where no fsck.ext4 / fsck.vfat is installed
RDEPENDS:${PN} = "dosfstools e2fsprogs-e2fsck"
