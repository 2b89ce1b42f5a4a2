"""What the reference image is made of: Debian suite, mirror and packages.

The list mirrors what the Yocto image installs (twelvefactor-image): a kernel
with WireGuard, systemd with networkd and timesyncd, nftables, wireguard-tools,
SWUpdate, Python with paho-mqtt (2.1.0 in both trixie and wrynose).
"""

from __future__ import annotations

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"

PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "initramfs-tools",  # Debian's ext4 and virtio drivers are modules
    "systemd",
    "systemd-sysv",
    "systemd-timesyncd",
    "udev",
    "kmod",
    "dbus",
    "netbase",  # /etc/protocols: without it an nftables ruleset naming icmp fails to load
    "iproute2",
    "nftables",
    "wireguard-tools",
    "swupdate",
    "python3",
    "python3-paho-mqtt",
    "procps",
    "util-linux",
    "e2fsprogs",
    "openssl",
    "login",
    "passwd",
)

# Modules the initramfs needs to find and mount root=PARTLABEL=... on the
# disks QEMU offers (virtio-blk, virtio-scsi, AHCI, NVMe); MODULES=list keeps
# the initramfs small (about 36 MB with Debian's default MODULES=most).
INITRAMFS_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "ext4",
    "crc32c_generic",
)

# Documentation, manuals and translations are of no use on a device.
DPKG_EXCLUDES: tuple[str, ...] = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
