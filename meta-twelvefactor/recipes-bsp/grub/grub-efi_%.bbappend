# Commands the twelvefactor grub.cfg uses beyond oe-core's default set.
GRUB_BUILDIN:append:twelvefactor = " echo sleep reboot"
