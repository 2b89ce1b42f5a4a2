SUMMARY = "twelvefactor boot confirmation and update reboot services"
DESCRIPTION = "Root service that confirms a good boot (upgrade_available=0, bootcount=0) once the agent has both sessions online and the required units are active, and reboots a freshly installed slot that does not get there within the window, so that the bootloader falls back; and the path unit that reboots into an installed update when the unprivileged agent asks."
HOMEPAGE = "https://github.com/twelvefactor/twelvefactor"
BUGTRACKER = "https://github.com/twelvefactor/twelvefactor/issues"
SECTION = "base"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://twelvefactor-confirm \
    file://twelvefactor-confirm.service \
    file://twelvefactor-reboot \
    file://twelvefactor-reboot.path \
    file://twelvefactor-reboot.service \
"

S = "${UNPACKDIR}"

inherit systemd features_check allarch

REQUIRED_DISTRO_FEATURES = "systemd"

SYSTEMD_SERVICE:${PN} = "twelvefactor-confirm.service twelvefactor-reboot.path"

do_install() {
    install -d ${D}${libexecdir}/twelvefactor
    install -m 0755 ${UNPACKDIR}/twelvefactor-confirm ${D}${libexecdir}/twelvefactor/twelvefactor-confirm
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${UNPACKDIR}/twelvefactor-confirm.service ${D}${systemd_system_unitdir}/twelvefactor-confirm.service
    install -m 0755 ${UNPACKDIR}/twelvefactor-reboot ${D}${libexecdir}/twelvefactor/twelvefactor-reboot
    install -m 0644 ${UNPACKDIR}/twelvefactor-reboot.path ${D}${systemd_system_unitdir}/twelvefactor-reboot.path
    install -m 0644 ${UNPACKDIR}/twelvefactor-reboot.service ${D}${systemd_system_unitdir}/twelvefactor-reboot.service
}

# twelvefactor-reboot.service is started by twelvefactor-reboot.path, never
# enabled: the systemd class packages the units SYSTEMD_SERVICE names (and a
# .socket's .service), not a .path's, so it is shipped here.
FILES:${PN} += "${systemd_system_unitdir}/twelvefactor-reboot.service"

RDEPENDS:${PN} = "python3-core python3-json twelvefactor-agent"
