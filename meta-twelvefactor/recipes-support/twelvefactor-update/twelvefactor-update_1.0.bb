SUMMARY = "twelvefactor update (.swu) for the twelvefactor-image root file system"
DESCRIPTION = "Signed (CMS) SWUpdate archive holding the compressed root file system. Two selections, stable,copy1 (writes rootfs-a) and stable,copy2 (writes rootfs-b); the device picks the one for the slot it is not running."

require twelvefactor-update.inc

SRC_URI = "file://sw-description"

SWUPDATE_IMAGES_FSTYPES[twelvefactor-image] = ".rootfs.ext4.zst"

# the image the template names as @@TWELVEFACTOR_ROOTFS_IMAGE@@
TWELVEFACTOR_ROOTFS_IMAGE = "twelvefactor-image${IMAGE_MACHINE_SUFFIX}.rootfs.ext4.zst"
do_swuimage[vardeps] += "TWELVEFACTOR_ROOTFS_IMAGE"
