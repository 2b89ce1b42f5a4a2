# twelvefactor A/B: boot counter in the environment and redundant environment
# copies on the EFI system partition (see twelvefactor-boot-uboot).
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"

SRC_URI:append:qemuarm64 = " file://uboot-twelvefactor.cfg file://uboot-env-virtio.cfg"
SRC_URI:append:rpi = " file://uboot-twelvefactor.cfg file://uboot-env-mmc.cfg"
