# twelvefactor A/B: boot counter in the environment and redundant environment
# copies on the EFI system partition (see twelvefactor-boot-uboot).
FILESEXTRAPATHS:prepend:twelvefactor := "${THISDIR}/files:"

SRC_URI:append:twelvefactor:qemuarm64 = " file://uboot-twelvefactor.cfg file://uboot-env-virtio.cfg"
SRC_URI:append:twelvefactor:rpi = " file://uboot-twelvefactor.cfg file://uboot-env-mmc.cfg"
