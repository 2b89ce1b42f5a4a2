SUMMARY = "twelvefactor update (.swu) for the twelvefactor-image root file system"
DESCRIPTION = "Signed (CMS) SWUpdate archive holding the compressed root file system. Two selections, stable,copy1 (writes rootfs-a) and stable,copy2 (writes rootfs-b); the device picks the one for the slot it is not running."
HOMEPAGE = "https://github.com/twelvefactor/twelvefactor"
BUGTRACKER = "https://github.com/twelvefactor/twelvefactor/issues"
SECTION = "base"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://sw-description"

inherit swupdate

IMAGE_DEPENDS = "twelvefactor-image"
SWUPDATE_IMAGES = "twelvefactor-image"
SWUPDATE_IMAGES_FSTYPES[twelvefactor-image] = ".rootfs.ext4.zst"
SWUPDATE_IMAGES_NOAPPEND_MACHINE[twelvefactor-image] = "0"

# values the sw-description template names as @@VAR@@
TWELVEFACTOR_UPDATE_VERSION ?= "${DISTRO_VERSION}"
TWELVEFACTOR_HW_REVISION ?= "1.0"
TWELVEFACTOR_ROOTFS_IMAGE = "twelvefactor-image${IMAGE_MACHINE_SUFFIX}.rootfs.ext4.zst"

# CMS signature over sw-description. The defaults are the development key
# pair in the layer; a release build sets TWELVEFACTOR_RELEASE = "1" and its
# own SWUPDATE_CMS_KEY/SWUPDATE_CMS_CERT.
SWUPDATE_SIGNING = "CMS"
TWELVEFACTOR_DEV_SIGNING_DIR = "${TWELVEFACTOR_LAYERDIR}/files/dev-signing"
SWUPDATE_CMS_KEY ?= "${TWELVEFACTOR_DEV_SIGNING_DIR}/twelvefactor-dev-update.key"
SWUPDATE_CMS_CERT ?= "${TWELVEFACTOR_DEV_SIGNING_DIR}/twelvefactor-dev-update.crt"

python twelvefactor_check_signing_key() {
    import os
    if d.getVar('TWELVEFACTOR_RELEASE') != '1':
        return
    dev = os.path.realpath(d.getVar('TWELVEFACTOR_DEV_SIGNING_DIR')) + os.sep
    for var in ('SWUPDATE_CMS_KEY', 'SWUPDATE_CMS_CERT'):
        for path in (d.getVar(var) or '').split():
            if os.path.realpath(path).startswith(dev):
                bb.fatal('TWELVEFACTOR_RELEASE = "1" but %s is the development key material %s' % (var, path))
}
twelvefactor_check_signing_key[doc] = "Stops a release build (TWELVEFACTOR_RELEASE = 1) that would sign with the development key"
do_swuimage[prefuncs] += "twelvefactor_check_signing_key"
