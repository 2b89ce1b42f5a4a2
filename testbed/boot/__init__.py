"""The boot tier's bed: a QEMU machine, the device on it, the hub and the link it reaches."""
