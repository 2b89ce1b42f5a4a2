SUMMARY = "twelvefactor delta update (.swu) for the twelvefactor-image root file system"
DESCRIPTION = "Signed (CMS) SWUpdate archive holding the zchunk header of the root file system, not the file system: SWUpdate's delta handler rebuilds the new image from the chunks of the running slot and fetches the missing ones from the management service's artifact server, then hands the image to the raw handler. The same two selections as twelvefactor-update (stable,copy1 writes rootfs-a, stable,copy2 rootfs-b); the agent installs the full .swu when a delta install fails."

require twelvefactor-update.inc

inherit twelvefactor_delta

# meta-swupdate reads the template as ${S}/sw-description; the layer keeps it
# beside the full one as sw-description-delta (twelvefactor_sw_description_delta
# puts it in place) and leaves it out of the archive.
SRC_URI = "file://sw-description-delta"
SWUPDATE_SRC_URI_EXCLUDE = "sw-description-delta"

# Only the zchunk header travels in the .swu (image_types_zchunk.bbclass of
# meta-swupdate makes it beside the .zck, twelvefactor-image.bb asks for both).
SWUPDATE_IMAGES_FSTYPES[twelvefactor-image] = ".rootfs.ext4.zck.zckheader"

# the files the template names: the header in the .swu, and the .zck whose
# sha256 names it on the artifact server (both deployed by twelvefactor-image).
# The .zck is copied next to the .swu as ${IMAGE_LINK_NAME}.zck: the operator
# uploads both (docs/updates.md).
TWELVEFACTOR_ROOTFS_ZCKHEADER = "twelvefactor-image${IMAGE_MACHINE_SUFFIX}.rootfs.ext4.zck.zckheader"
TWELVEFACTOR_ROOTFS_ZCK = "twelvefactor-image${IMAGE_MACHINE_SUFFIX}.rootfs.ext4.zck"
# TWELVEFACTOR_ARTIFACT_URL: the distro's (conf/distro/twelvefactor.conf),
# signed into sw-description.
do_swuimage[vardeps] += "TWELVEFACTOR_ROOTFS_ZCKHEADER TWELVEFACTOR_ROOTFS_ZCK TWELVEFACTOR_ARTIFACT_URL"

python twelvefactor_sw_description_delta() {
    import os
    import shutil
    unpackdir = d.getVar('UNPACKDIR')
    shutil.copyfile(os.path.join(unpackdir, 'sw-description-delta'), os.path.join(unpackdir, 'sw-description'))
}
twelvefactor_sw_description_delta[doc] = "Puts the delta template where meta-swupdate reads sw-description"
do_unpack[postfuncs] += "twelvefactor_sw_description_delta"
