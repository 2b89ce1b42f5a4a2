SUMMARY = "twelvefactor device firewall"
DESCRIPTION = "nftables ruleset (table inet twelvefactor) that drops all unsolicited inbound traffic and allows outbound traffic only to the hub and, inside the tunnel, to the two services; a unit that loads it before any network interface comes up, and a systemd-networkd drop-in that requires it."
HOMEPAGE = "https://github.com/twelvefactor/twelvefactor"
BUGTRACKER = "https://github.com/twelvefactor/twelvefactor/issues"
SECTION = "net"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://twelvefactor.nft \
    file://twelvefactor-firewall.service \
    file://10-twelvefactor-firewall.conf \
"

S = "${UNPACKDIR}"

inherit systemd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

SYSTEMD_SERVICE:${PN} = "twelvefactor-firewall.service"

do_install() {
    install -d ${D}${sysconfdir}/nftables
    install -m 0644 ${UNPACKDIR}/twelvefactor.nft ${D}${sysconfdir}/nftables/twelvefactor.nft
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${UNPACKDIR}/twelvefactor-firewall.service ${D}${systemd_system_unitdir}/twelvefactor-firewall.service
    install -d ${D}${systemd_system_unitdir}/systemd-networkd.service.d
    install -m 0644 ${UNPACKDIR}/10-twelvefactor-firewall.conf ${D}${systemd_system_unitdir}/systemd-networkd.service.d/10-twelvefactor-firewall.conf
}

FILES:${PN} += "${systemd_system_unitdir}/systemd-networkd.service.d"

RDEPENDS:${PN} = "nftables systemd-networkd twelvefactor-netconfig"
