"""The kernel modules the reference image keeps: those the layer's image would have.

Debian's kernel builds almost everything as a module and installs them all; the
layer's linux-yocto builds in what its fragment (twelvefactor.cfg) sets to y
and installs only the kernel-module-* packages the image names. With every
module at hand, a ruleset that needs a module the Yocto image lacks still
loads here, and the boot tests pass on an image that would come up without a
network. So the image keeps only:

- the modules of the options the layer builds in (=y in twelvefactor.cfg) that
  Debian builds as modules, and of the kernel-module-* packages in the image's
  package closure (refimage/image_contents.py);
- MACHINE below: what linux-yocto builds in for the machine (qemux86-64,
  qemuarm64) that Debian builds as modules, each with its reason;
- the modules those depend on (modules.dep).

Everything else below /usr/lib/modules/<version>/kernel is deleted and depmod
run again. A layer option Debian's kernel lacks, or builds as a module this
table cannot name, stops the build: the reference image must not quietly lack
what the Yocto image has either.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

from refimage import image_contents, packages
from refimage.progress import BuildError, run

# What linux-yocto builds in for both QEMU machines (their BSPs' virtio and the
# standard kernel type's file systems) and the boot tests' QEMU uses; module
# names as Debian's kernel has them.
COMMON: dict[str, str] = {
    "virtio_blk": "the disk (VIRTIO_BLK, linux-yocto's qemu virtio config)",
    "virtio_net": "the NIC (VIRTIO_NET)",
    "virtio-rng": "entropy from the host (HW_RANDOM_VIRTIO)",
    "ext4": "the root and data file systems (EXT4_FS, standard kernel type)",
    "crc32c_generic": "ext4's metadata checksums (CRYPTO_CRC32C)",
    # Debian's kernel mounts FAT with iocharset=ascii and utf8 by default
    # (FAT_DEFAULT_IOCHARSET, FAT_DEFAULT_UTF8); linux-yocto keeps Kconfig's
    # iso8859-1, which the layer builds in (NLS_ISO8859_1=y)
    "nls_ascii": "boot.mount (vfat) with Debian's default iocharset",
    "nls_utf8": "boot.mount (vfat) with Debian's default utf8 option",
    # the disks the initramfs is built to find root on (packages.INITRAMFS_MODULES)
    "virtio_scsi": "a virtio-scsi disk (SCSI_VIRTIO)",
    "sd_mod": "SCSI/SATA disks (BLK_DEV_SD)",
    "ahci": "a SATA disk (SATA_AHCI)",
    "nvme": "an NVMe disk (BLK_DEV_NVME)",
    # `ss` in the boot tests asks the kernel's socket diagnostics (Kconfig
    # default y for INET_DIAG and its TCP/UDP parts, which linux-yocto keeps)
    "inet_diag": "socket diagnostics (INET_DIAG)",
    "tcp_diag": "TCP socket diagnostics (INET_TCP_DIAG)",
    "udp_diag": "UDP socket diagnostics (INET_UDP_DIAG)",
}
MACHINE: dict[str, dict[str, str]] = {
    "qemux86-64": COMMON
    | {
        "crc32c-intel": "ext4's checksums, accelerated (CRYPTO_CRC32C_INTEL on x86-64)",
        "efivarfs": "systemd mounts efivarfs on an EFI boot (EFIVAR_FS, x86-64 EFI config)",
    },
    # U-Boot's booti is no EFI boot: no efivarfs
    "qemuarm64": COMMON
    | {
        "virtio_mmio": "the disk on QEMU's virt machine (VIRTIO_MMIO, qemuarm64's BSP)",
    },
}

_SUFFIX = re.compile(r"\.ko(\.xz|\.zst|\.gz)?$")


def _name(path: str) -> str:
    return _SUFFIX.sub("", Path(path).name).replace("-", "_")


def kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "usr/lib/modules").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise BuildError(f"expected one kernel in {root}/usr/lib/modules, found {versions}")
    return versions[0]


def debian_config(root: Path, version: str) -> dict[str, str]:
    config = {}
    for line in (root / f"boot/config-{version}").read_text().splitlines():
        m = re.match(r"^CONFIG_([A-Z0-9_]+)=(.*)$", line)
        if m:
            config[m.group(1)] = m.group(2)
    return config


def layer_modules(
    contents: ModuleType, config: dict[str, str], machine: str = "qemux86-64"
) -> dict[str, str]:
    """Module -> why, for what the layer's kernel has that Debian builds as a module."""
    out: dict[str, str] = {}
    for option, value in contents.kernel_fragment().items():
        if value == "n":
            continue
        debian = config.get(option)
        if debian is None:
            raise BuildError(f"Debian's kernel lacks CONFIG_{option}, which the layer sets")
        if value == "m" or debian != "m":
            continue  # a layer module is kept only when the image installs it (below)
        module = contents.KERNEL_MODULES.get(option)
        if module is None:
            raise BuildError(
                f"CONFIG_{option}: built in by the layer, a module in Debian's kernel; "
                "add its module to KERNEL_MODULES in refimage/image_contents.py"
            )
        out[module] = f"CONFIG_{option}=y in twelvefactor.cfg"
    closure = contents.closure(machine).packages
    for package, parent in closure.items():
        if package.startswith("kernel-module-"):
            module = package[len("kernel-module-") :].replace("-", "_")
            out[module] = f"{package} in the image (from {parent})"
    return out


def required(contents: ModuleType, why: str) -> bool:
    """A module the layer asks for (IMAGE_INSTALL, a layer recipe's RDEPENDS) must
    exist; one an upstream package only recommends (systemd: kernel-module-unix)
    may be built into Debian's kernel as a bool, with no module to keep."""
    parent = why.rpartition("(from ")[2].rstrip(")")
    return "(from " not in why or parent == "IMAGE_INSTALL" or parent in contents.layer_recipes()


def modules_dep(root: Path, version: str) -> dict[str, tuple[str, list[str]]]:
    """Module name -> (its path below the version folder, the names it depends on)."""
    out = {}
    for line in (root / f"usr/lib/modules/{version}/modules.dep").read_text().splitlines():
        path, _, deps = line.partition(":")
        out[_name(path)] = (path, [_name(d) for d in deps.split()])
    return out


def builtin(root: Path, version: str) -> set[str]:
    path = root / f"usr/lib/modules/{version}/modules.builtin"
    return {_name(line) for line in path.read_text().split()}


def keep(root: Path, machine: str = "qemux86-64") -> dict[str, str]:
    """Prune the tree's kernel modules to the kept ones; returns module -> why."""
    version = kernel_version(root)
    config = debian_config(root, version)
    wanted = {**MACHINE[machine], **layer_modules(image_contents, config, machine)}
    initramfs = packages.initramfs_modules(machine)
    wanted |= {m.replace("-", "_"): "in the initramfs" for m in initramfs}
    wanted = {m.replace("-", "_"): why for m, why in wanted.items()}
    deps = modules_dep(root, version)
    built = builtin(root, version)
    kept: dict[str, str] = {}
    todo = list(wanted.items())
    while todo:
        module, why = todo.pop()
        if module in kept:
            continue
        if module not in deps:
            if module in built or not required(image_contents, why):
                continue
            raise BuildError(f"kernel module {module} ({why}) is not in Debian's kernel {version}")
        kept[module] = why
        todo += [(d, f"needed by {module}") for d in deps[module][1]]
    base = root / f"usr/lib/modules/{version}"
    keep_paths = {base / deps[m][0] for m in kept}
    for path in sorted((base / "kernel").rglob("*.ko*")):
        if path not in keep_paths:
            path.unlink()
    run(["chroot", root, "depmod", "-a", version])
    return dict(sorted(kept.items()))
