# twelvefactor: signed images only (CMS), hardware compatibility, systemd, the
# bootloader of the machine (GRUB on EFI machines, U-Boot on arm boards), the
# selection of the other slot at run time, and no web server.
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"

SRC_URI += " \
    file://twelvefactor.cfg \
    file://hwrevision \
    file://twelvefactor-swupdate-selection \
    file://20-twelvefactor \
"
SRC_URI:append:x86-64 = " file://twelvefactor-grub.cfg"
SRC_URI:append:aarch64 = " file://twelvefactor-uboot.cfg"

# The certificate the device trusts for .swu signatures. The default is the
# development certificate; a release build (TWELVEFACTOR_RELEASE = "1") must
# point this at the release certificate.
TWELVEFACTOR_SWU_CERT ??= "${TWELVEFACTOR_LAYERDIR}/files/dev-signing/twelvefactor-dev-update.crt"
do_install[file-checksums] += "${TWELVEFACTOR_SWU_CERT}:True"

python twelvefactor_check_swu_cert() {
    import os
    cert = d.getVar('TWELVEFACTOR_SWU_CERT')
    dev = os.path.join(d.getVar('TWELVEFACTOR_LAYERDIR'), 'files', 'dev-signing')
    if d.getVar('TWELVEFACTOR_RELEASE') == '1' and os.path.realpath(cert).startswith(os.path.realpath(dev) + os.sep):
        bb.fatal("TWELVEFACTOR_RELEASE = \"1\" but TWELVEFACTOR_SWU_CERT is the development certificate %s" % cert)
}
do_install[prefuncs] += "twelvefactor_check_swu_cert"

do_install:append() {
    install -d ${D}${sysconfdir}
    install -m 0644 ${UNPACKDIR}/hwrevision ${D}${sysconfdir}/hwrevision
    install -d ${D}${sysconfdir}/swupdate
    install -m 0644 ${TWELVEFACTOR_SWU_CERT} ${D}${sysconfdir}/swupdate/update-signing.crt
    install -d ${D}${bindir}
    install -m 0755 ${UNPACKDIR}/twelvefactor-swupdate-selection ${D}${bindir}/twelvefactor-swupdate-selection
    install -d ${D}${libdir}/swupdate/conf.d
    install -m 0644 ${UNPACKDIR}/20-twelvefactor ${D}${libdir}/swupdate/conf.d/20-twelvefactor
}

FILES:${PN} += " \
    ${sysconfdir}/hwrevision \
    ${sysconfdir}/swupdate/update-signing.crt \
    ${bindir}/twelvefactor-swupdate-selection \
"

PACKAGE_ARCH = "${MACHINE_ARCH}"
