# boot.scr keeps the firmware's kernel arguments (cmdline.txt among them) and
# adds the slot's root file system last: cmdline.txt names none, rather than a
# second root= that only matches slot A. (A variable of meta-raspberrypi's
# rpi-cmdline recipe, which oelint does not know.)
# nooelint: oelint.vars.mispell.unknown
CMDLINE_ROOTFS:twelvefactor = ""
