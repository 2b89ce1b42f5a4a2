# Commands the twelvefactor grub.cfg uses beyond oe-core's default set
# (regexp: the disk that holds the ESP, whose partitions 2 and 3 are the slots).
GRUB_BUILDIN:append:twelvefactor = " echo sleep reboot regexp"
