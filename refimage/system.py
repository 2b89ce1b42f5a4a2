"""What the Yocto image gets from base-files, the image recipe and IMAGE_FEATURES,
done here for the Debian tree: read-only root, mount table, identity files,
serial-console access for the tests, and Debian units a device does not run.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

from refimage import layer, machines
from refimage.progress import BuildError, run

TOP = Path(__file__).resolve().parent.parent
DISTRO_CONF = layer.LAYER / "conf/distro/twelvefactor.conf"

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
    # Debian runs `swupdate-progress -r`, which reboots as soon as an install
    # succeeds; the agent chooses the moment (and the layer does not install it).
    "swupdate-progress.service",
    # SWUpdate starts on demand only, as the layer's swupdate bbappend has it
    # (SYSTEMD_SERVICE = swupdate.socket): Debian's wolfSSL build loaded at a
    # boot with a dead RTC never trusts the update-signing certificate
    "swupdate.service",
)


# Units of Debian's systemd package that oe-core packages apart, in packages
# the layer's image does not install: masked, so they do not run here either.
# systemd-binfmt (Debian's python3 registers .pyc files through binfmt.d; the
# image keeps no binfmt_misc module, as the Yocto image installs none).
MASKED_UNITS = (
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
)


# Units oe-core's systemd recipe enables by default (its presets) that Debian
# does not: the layer's networkd configuration needs networkd running.
YOCTO_DEFAULT_UNITS = ("systemd-networkd.service",)


# The layer builds SWUpdate with CONFIG_BOOTLOADER_DEFAULT_GRUB on x86-64 and
# CONFIG_BOOTLOADER_DEFAULT_UBOOT on arm64 (its fragments twelvefactor-grub.cfg,
# twelvefactor-uboot.cfg); Debian's build defaults to no bootloader, so an
# update would never switch slots. This drop-in, sourced by swupdate.sh before
# the layer's 20-twelvefactor, selects the same bootloader at run time.
SWUPDATE_BOOTLOADER = Path("usr/lib/swupdate/conf.d/10-refimage-bootloader")


def swupdate_bootloader(bootloader: str) -> str:
    return (
        "# refimage: Debian's SWUpdate has no default bootloader; the layer's build "
        f"selects {bootloader}.\n"
        f'SWUPDATE_ARGS="${{SWUPDATE_ARGS}} -B {bootloader}"\n'
    )


def distro_variables(top: Path = TOP) -> dict[str, str]:
    """The distro conf's plain `VAR = "value"` assignments (what os-release needs)."""
    path = top / DISTRO_CONF
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r'^([A-Z][A-Z0-9_]*)\s*(?:\?\?=|\?=|:=|=)\s*"([^"$]*)"\s*$', line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2)
    return out


def os_release(top: Path = TOP) -> str:
    """/usr/lib/os-release as oe-core's os-release recipe writes it for this distro.

    The same fields, order and quoting (ID and VERSION_ID unquoted, sanitised),
    from DISTRO, DISTRO_NAME, DISTRO_VERSION and DISTRO_CODENAME; the agent
    reports VERSION_ID and compares update versions with it.
    """
    values = distro_variables(top)
    missing = [v for v in ("DISTRO", "DISTRO_NAME", "DISTRO_VERSION") if not values.get(v)]
    if missing:
        raise BuildError(f"{top / DISTRO_CONF} sets no {', '.join(missing)}")
    version = values["DISTRO_VERSION"]
    codename = values.get("DISTRO_CODENAME", "")
    full = f"{version} ({codename})" if codename else version
    fields = [
        ("ID", values["DISTRO"], False),
        ("NAME", values["DISTRO_NAME"], True),
        ("VERSION", full, True),
        ("VERSION_ID", version, False),
        ("VERSION_CODENAME", codename, True),
        ("PRETTY_NAME", f"{values['DISTRO_NAME']} {full}", True),
        ("CPE_NAME", f"cpe:/o:openembedded:{values['DISTRO']}:{version}", True),
    ]
    lines = []
    for name, value, quoted in fields:
        if value:
            lines.append(f'{name}="{value}"' if quoted else f"{name}={_sanitise(value)}")
    return "\n".join(lines) + "\n"


def _sanitise(value: str) -> str:
    # oe-core's os-release.bb sanitise_value(), for the unquoted fields
    return value.replace("+", "-").replace(" ", "_").lower()


def write_os_release(root: Path, top: Path = TOP) -> None:
    """/usr/lib/os-release, and /etc/os-release a relative link to it (as oe-core installs it)."""
    target = root / "usr/lib/os-release"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    target.write_text(os_release(top))
    target.chmod(0o644)
    link = root / "etc/os-release"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink("../usr/lib/os-release", link)


def chroot(root: Path, *argv: str) -> bytes:
    return run(["chroot", root, *argv])


def configure(root: Path, *, console_login: bool, machine: str = machines.DEFAULT) -> None:
    (root / "etc/fstab").write_text(FSTAB)
    (root / "etc/hostname").write_text(HOSTNAME)
    write_os_release(root)
    # Empty: systemd uses a transient id on a read-only root and does not
    # treat every boot as the first one (as "uninitialized" would).
    (root / "etc/machine-id").write_text("")
    for d in ("data", "boot"):
        (root / d).mkdir(exist_ok=True)
    for unit in DISABLED_UNITS:
        run(["systemctl", f"--root={root}", "disable", "--quiet", unit])
    run(["systemctl", f"--root={root}", "mask", "--quiet", *MASKED_UNITS])
    if console_login:
        # Test images only, like Yocto's empty-root-password feature: root
        # logs in on the serial console without a password.
        chroot(root, "passwd", "--delete", "root")
    else:
        chroot(root, "passwd", "--lock", "root")
    described = machines.get(machine)
    kernel_links(root, described.kernel)
    path = root / SWUPDATE_BOOTLOADER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(swupdate_bootloader(described.bootloader))


def kernel_links(root: Path, kernel: str = "bzImage") -> None:
    """/boot/<kernel> and /boot/initrd, the names the layer's boot script loads.

    U-Boot's booti takes an uncompressed arm64 Image (KERNEL_IMAGETYPE "Image"
    on qemuarm64); Debian installs it gzipped, so it is unpacked into a file."""
    boot = root / "boot"
    kernels = sorted(p.name for p in boot.glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(f"expected one kernel in {boot}, found {kernels}")
    version = kernels[0].removeprefix("vmlinuz-")
    initrd = boot / f"initrd.img-{version}"
    if not initrd.is_file():
        raise BuildError(f"no initramfs for kernel {version} in {boot}")
    for name in (kernel, "initrd"):
        path = boot / name
        if path.is_symlink() or path.exists():
            path.unlink()
    raw = (boot / kernels[0]).read_bytes()
    if kernel == "Image" and raw[:2] == b"\x1f\x8b":
        (boot / kernel).write_bytes(gzip.decompress(raw))
    else:
        os.symlink(kernels[0], boot / kernel)
    os.symlink(initrd.name, boot / "initrd")


def chroot_quiet(root: Path, *argv: str) -> None:
    chroot(root, *argv)


def enable(root: Path, units: list[str]) -> None:
    """Enable the units the recipes enable (systemd.bbclass does it at image time)."""
    run(["systemctl", f"--root={root}", "enable", "--quiet", *YOCTO_DEFAULT_UNITS, *units])
