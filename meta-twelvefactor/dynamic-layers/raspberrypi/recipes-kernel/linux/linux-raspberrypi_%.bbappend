# WireGuard, nftables and the GPT/FAT support the A/B disk needs.
FILESEXTRAPATHS:prepend:twelvefactor := "${TWELVEFACTOR_LAYERDIR}/recipes-kernel/linux/files:"
SRC_URI:append:twelvefactor = " file://twelvefactor.cfg"

# The device trees in the slot keep the firmware's layout (/boot/broadcom/*.dtb,
# /boot/overlays/*.dtbo): U-Boot names the board's tree as fdtfile
# ("broadcom/bcm2711-rpi-4-b.dtb") and boot.scr loads it from the slot.
KERNEL_DTBVENDORED:twelvefactor = "1"
