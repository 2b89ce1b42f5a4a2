SUMMARY = "twelvefactor tunnel and time configuration rendered from provisioning data"
DESCRIPTION = "twelvefactor-netconfig reads /data/provisioning/network.conf at boot, renders the WireGuard netdev/network and the timesyncd drop-in into /run, and fills the firewall's named sets; twelvefactor-link makes the tunnel's keepalive and time sync follow the agent's link profile (metered devices send nothing between check-ins). Also the underlay network file and the timesyncd drop-in that keeps the saved clock on /data."
HOMEPAGE = "https://github.com/twelvefactor/twelvefactor"
BUGTRACKER = "https://github.com/twelvefactor/twelvefactor/issues"
SECTION = "net"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://twelvefactor-netconfig \
    file://twelvefactor-netconfig.service \
    file://50-twelvefactor-tunnel.netdev.in \
    file://50-twelvefactor-tunnel.network.in \
    file://twelvefactor-timesyncd.conf.in \
    file://80-twelvefactor-underlay.network \
    file://10-twelvefactor-timesyncd.conf \
    file://twelvefactor-netconfig-tmpfiles.conf \
    file://twelvefactor-link \
    file://twelvefactor-link.path \
    file://twelvefactor-link.service \
"

S = "${UNPACKDIR}"

inherit systemd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

SYSTEMD_SERVICE:${PN} = "twelvefactor-netconfig.service twelvefactor-link.path"

do_install() {
    install -d ${D}${sbindir}
    install -m 0755 ${UNPACKDIR}/twelvefactor-netconfig ${D}${sbindir}/twelvefactor-netconfig
    install -d ${D}${datadir}/twelvefactor/netconfig
    install -m 0644 ${UNPACKDIR}/50-twelvefactor-tunnel.netdev.in ${D}${datadir}/twelvefactor/netconfig/50-twelvefactor-tunnel.netdev.in
    install -m 0644 ${UNPACKDIR}/50-twelvefactor-tunnel.network.in ${D}${datadir}/twelvefactor/netconfig/50-twelvefactor-tunnel.network.in
    install -m 0644 ${UNPACKDIR}/twelvefactor-timesyncd.conf.in ${D}${datadir}/twelvefactor/netconfig/twelvefactor-timesyncd.conf.in
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${UNPACKDIR}/twelvefactor-netconfig.service ${D}${systemd_system_unitdir}/twelvefactor-netconfig.service
    install -d ${D}${systemd_system_unitdir}/systemd-timesyncd.service.d
    install -m 0644 ${UNPACKDIR}/10-twelvefactor-timesyncd.conf ${D}${systemd_system_unitdir}/systemd-timesyncd.service.d/10-twelvefactor-timesyncd.conf
    install -d ${D}${nonarch_libdir}/systemd/network
    install -m 0644 ${UNPACKDIR}/80-twelvefactor-underlay.network ${D}${nonarch_libdir}/systemd/network/80-twelvefactor-underlay.network
    install -d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${UNPACKDIR}/twelvefactor-netconfig-tmpfiles.conf ${D}${nonarch_libdir}/tmpfiles.d/twelvefactor-netconfig.conf
    install -d ${D}${libexecdir}/twelvefactor
    install -m 0755 ${UNPACKDIR}/twelvefactor-link ${D}${libexecdir}/twelvefactor/twelvefactor-link
    install -m 0644 ${UNPACKDIR}/twelvefactor-link.path ${D}${systemd_system_unitdir}/twelvefactor-link.path
    install -m 0644 ${UNPACKDIR}/twelvefactor-link.service ${D}${systemd_system_unitdir}/twelvefactor-link.service
}

# twelvefactor-link.service is started by twelvefactor-link.path, never enabled:
# the systemd class packages the units SYSTEMD_SERVICE names, not a .path's.
FILES:${PN} += "\
    ${datadir}/twelvefactor \
    ${libexecdir}/twelvefactor \
    ${systemd_system_unitdir}/twelvefactor-link.service \
    ${systemd_system_unitdir}/systemd-timesyncd.service.d \
    ${nonarch_libdir}/systemd/network \
    ${nonarch_libdir}/tmpfiles.d \
"

RDEPENDS:${PN} = "\
    nftables \
    python3-core \
    python3-io \
    python3-netclient \
    systemd-networkd \
    twelvefactor-firewall \
    wireguard-tools \
"
