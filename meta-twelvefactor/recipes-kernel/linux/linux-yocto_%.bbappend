# WireGuard, nftables and the GPT/FAT support the A/B disk needs.
FILESEXTRAPATHS:prepend:twelvefactor := "${THISDIR}/files:"
SRC_URI:append:twelvefactor = " file://twelvefactor.cfg"
