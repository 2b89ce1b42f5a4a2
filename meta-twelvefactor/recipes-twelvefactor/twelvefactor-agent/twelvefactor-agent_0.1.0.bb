SUMMARY = "twelvefactor device agent"
DESCRIPTION = "The only process that talks off the device: two MQTT 5 sessions over mutual TLS (management and solution), a store-and-forward queue on /data, health reports, update handling, and a local Unix-socket API for applications."
HOMEPAGE = "https://github.com/twelvefactor/twelvefactor"
BUGTRACKER = "https://github.com/twelvefactor/twelvefactor/issues"
SECTION = "net"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# The agent is built from the agent/ folder of the repository this layer is in
# (TWELVEFACTOR_REPO_DIR, set in conf/layer.conf), so a kas build of a checkout
# builds the agent of that same checkout.
FILESEXTRAPATHS:prepend := "${TWELVEFACTOR_REPO_DIR}:"
SRC_URI = "\
    file://agent \
    file://twelvefactor-agent-tmpfiles.conf \
"

S = "${UNPACKDIR}/agent"

inherit python_setuptools_build_meta systemd useradd

USERADD_PACKAGES = "${PN}"
# swupdate: the group of SWUpdate's control socket (swupdate.socket.d in the
# swupdate bbappend), so the agent can hand an update to SWUpdate unprivileged.
GROUPADD_PARAM:${PN} = "--system twelvefactor; --system swupdate"
USERADD_PARAM:${PN} = "--system --home-dir /data/agent --no-create-home --shell /sbin/nologin --gid twelvefactor --groups swupdate twelvefactor"

SYSTEMD_SERVICE:${PN} = "twelvefactor-agent.service"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/twelvefactor-agent.service ${D}${systemd_system_unitdir}/twelvefactor-agent.service
    install -d ${D}${sysconfdir}/twelvefactor
    install -m 0644 ${S}/config/agent.toml ${D}${sysconfdir}/twelvefactor/agent.toml
    install -d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${UNPACKDIR}/twelvefactor-agent-tmpfiles.conf ${D}${nonarch_libdir}/tmpfiles.d/twelvefactor-agent.conf
}

FILES:${PN} += "${nonarch_libdir}/tmpfiles.d"
CONFFILES:${PN} = "${sysconfdir}/twelvefactor/agent.toml"

RDEPENDS:${PN} = "\
    python3-asyncio \
    python3-core \
    python3-io \
    python3-json \
    python3-logging \
    python3-netclient \
    python3-paho-mqtt \
    python3-shell \
    python3-sqlite3 \
    python3-tomllib \
    swupdate-client \
"
