# twelvefactor distribution: signed images only (CMS), hardware compatibility,
# systemd, the machine's bootloader (GRUB on EFI machines, U-Boot on arm
# boards), the selection of the slot that is not running, the certificate the
# device trusts, no web server, and the delta handler with its settings file.
FILESEXTRAPATHS:prepend:twelvefactor := "${THISDIR}/files:"

# CONFIG_DELTA=y (twelvefactor.cfg): swupdate.inc adds zchunk to DEPENDS for
# it, but curl only for CONFIG_DOWNLOAD or CONFIG_SURICATTA, which the layer
# leaves out; the delta handler fetches its chunks with libcurl (and
# SWUpdate's Kconfig hides DELTA without it).
DEPENDS:append:twelvefactor = " curl"

# swupdate-settings.conf is SWUpdate's settings file (libconfig), installed as
# /etc/swupdate.cfg; not named *.cfg here, since cml1.bbclass merges every
# *.cfg in SRC_URI into SWUpdate's Kconfig .config as a fragment.
SRC_URI:append:twelvefactor = " \
    file://twelvefactor.cfg \
    file://hwrevision \
    file://twelvefactor-swupdate-selection \
    file://20-twelvefactor \
    file://swupdate-socket-twelvefactor.conf \
    file://swupdate-settings.conf \
    file://0001-swupdate-client-do-not-miss-the-end-of-a-quickly-refused-image.patch \
"
SRC_URI:append:twelvefactor:x86-64 = " file://twelvefactor-grub.cfg"
SRC_URI:append:twelvefactor:aarch64 = " file://twelvefactor-uboot.cfg"

# /etc/hwrevision names the machine
PACKAGE_ARCH:twelvefactor = "${MACHINE_ARCH}"

# SWUpdate starts on demand (socket activation), not at boot: it loads the
# update-signing certificate when it starts, and at boot the clock may still
# be wrong (a dead RTC and no saved clock), which some crypto back ends hold
# against the certificate until a restart. Its first client is the agent with
# an update, after a TLS session that needed the right time.
SYSTEMD_SERVICE:${PN}:twelvefactor = "swupdate.socket"

# TWELVEFACTOR_SWU_CERT (conf/distro/twelvefactor.conf): the certificate the
# device trusts for .swu signatures. A release build must not trust the
# development certificate.
do_install[file-checksums] += "${TWELVEFACTOR_SWU_CERT}:True"

do_install:append:twelvefactor() {
    if [ "${TWELVEFACTOR_RELEASE}" = "1" ] && \
       [ "$(readlink -f ${TWELVEFACTOR_SWU_CERT})" = "$(readlink -f ${TWELVEFACTOR_DEV_SWU_CERT})" ]; then
        bbfatal "TWELVEFACTOR_RELEASE = 1 but TWELVEFACTOR_SWU_CERT is the development certificate ${TWELVEFACTOR_SWU_CERT}"
    fi
    install -d ${D}${sysconfdir}
    install -m 0644 ${UNPACKDIR}/hwrevision ${D}${sysconfdir}/hwrevision
    install -m 0644 ${UNPACKDIR}/swupdate-settings.conf ${D}${sysconfdir}/swupdate.cfg
    install -d ${D}${sysconfdir}/swupdate
    install -m 0644 ${TWELVEFACTOR_SWU_CERT} ${D}${sysconfdir}/swupdate/update-signing.crt
    install -d ${D}${bindir}
    install -m 0755 ${UNPACKDIR}/twelvefactor-swupdate-selection ${D}${bindir}/twelvefactor-swupdate-selection
    install -d ${D}${libdir}/swupdate/conf.d
    install -m 0644 ${UNPACKDIR}/20-twelvefactor ${D}${libdir}/swupdate/conf.d/20-twelvefactor
    install -d ${D}${systemd_system_unitdir}/swupdate.socket.d
    install -m 0644 ${UNPACKDIR}/swupdate-socket-twelvefactor.conf ${D}${systemd_system_unitdir}/swupdate.socket.d/twelvefactor.conf
}

FILES:${PN}:append:twelvefactor = " \
    ${sysconfdir}/hwrevision \
    ${sysconfdir}/swupdate.cfg \
    ${sysconfdir}/swupdate/update-signing.crt \
    ${bindir}/twelvefactor-swupdate-selection \
    ${systemd_system_unitdir}/swupdate.socket.d \
"

# twelvefactor-swupdate-selection asks the agent's twelvefactor-bootenv for the
# running slot: one reader of the kernel command line for every program
RDEPENDS:${PN}:append:twelvefactor = " twelvefactor-agent"
