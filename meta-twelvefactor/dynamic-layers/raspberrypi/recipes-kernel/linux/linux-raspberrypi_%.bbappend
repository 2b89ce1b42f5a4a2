# WireGuard, nftables and the GPT/FAT support the A/B disk needs.
FILESEXTRAPATHS:prepend:twelvefactor := "${TWELVEFACTOR_LAYERDIR}/recipes-kernel/linux/files:"
SRC_URI:append:twelvefactor = " file://twelvefactor.cfg"
