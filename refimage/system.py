"""What the Yocto image gets from base-files, the image recipe and IMAGE_FEATURES,
done here for the Debian tree: read-only root, mount table, identity files,
serial-console access for the tests, and Debian units a device does not run.
"""

from __future__ import annotations

import os
from pathlib import Path

from refimage.progress import BuildError, run

# Root is not in fstab: it stays as the kernel mounted it (`ro` on the command
# line), so systemd-remount-fs never makes it writable. /data and the ESP on
# /boot are the layer's mount units (twelvefactor-base). /var is a tmpfs: the
# journal is volatile and everything that must survive lives on /data; /tmp is
# Debian's default tmp.mount.
FSTAB = """\
# <file system> <mount point> <type> <options>                       <dump> <pass>
tmpfs           /var          tmpfs  mode=0755,nosuid,nodev,size=64M 0      0
"""

HOSTNAME = "twelvefactor\n"

# Debian units that make no sense on a device with a read-only root and no
# package manager at run time.
DISABLED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
)


# Units oe-core's systemd recipe enables by default (its presets) that Debian
# does not: the layer's networkd configuration needs networkd running.
YOCTO_DEFAULT_UNITS = ("systemd-networkd.service",)


# The layer builds SWUpdate with CONFIG_BOOTLOADER_DEFAULT_GRUB (its config
# fragment twelvefactor-grub.cfg); Debian's build defaults to no bootloader, so
# an update would never switch slots. This drop-in, sourced by swupdate.sh
# before the layer's 20-twelvefactor, selects GRUB the same way at run time.
SWUPDATE_BOOTLOADER = (
    Path("usr/lib/swupdate/conf.d/10-refimage-bootloader"),
    "# refimage: Debian's SWUpdate has no default bootloader; the layer's build selects GRUB.\n"
    'SWUPDATE_ARGS="${SWUPDATE_ARGS} -B grub"\n',
)


def chroot(root: Path, *argv: str) -> bytes:
    return run(["chroot", root, *argv])


def configure(root: Path, *, console_login: bool) -> None:
    (root / "etc/fstab").write_text(FSTAB)
    (root / "etc/hostname").write_text(HOSTNAME)
    # Empty: systemd uses a transient id on a read-only root and does not
    # treat every boot as the first one (as "uninitialized" would).
    (root / "etc/machine-id").write_text("")
    for d in ("data", "boot"):
        (root / d).mkdir(exist_ok=True)
    for unit in DISABLED_UNITS:
        run(["systemctl", f"--root={root}", "disable", "--quiet", unit])
    if console_login:
        # Test images only, like Yocto's empty-root-password feature: root
        # logs in on the serial console without a password.
        chroot(root, "passwd", "--delete", "root")
    else:
        chroot(root, "passwd", "--lock", "root")
    kernel_links(root)
    path, text = SWUPDATE_BOOTLOADER
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)


def kernel_links(root: Path) -> None:
    """/boot/bzImage and /boot/initrd, the names the layer's grub.cfg loads."""
    boot = root / "boot"
    kernels = sorted(p.name for p in boot.glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(f"expected one kernel in {boot}, found {kernels}")
    version = kernels[0].removeprefix("vmlinuz-")
    initrd = boot / f"initrd.img-{version}"
    if not initrd.is_file():
        raise BuildError(f"no initramfs for kernel {version} in {boot}")
    for link, target in (("bzImage", kernels[0]), ("initrd", initrd.name)):
        path = boot / link
        if path.is_symlink() or path.exists():
            path.unlink()
        os.symlink(target, path)


def chroot_quiet(root: Path, *argv: str) -> None:
    chroot(root, *argv)


def enable(root: Path, units: list[str]) -> None:
    """Enable the units the recipes enable (systemd.bbclass does it at image time)."""
    run(["systemctl", f"--root={root}", "enable", "--quiet", *YOCTO_DEFAULT_UNITS, *units])
