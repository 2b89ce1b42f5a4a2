"""Build the reference disk image, cached by a hash of everything that goes in."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from refimage import (
    agent,
    disk,
    grub,
    kmodules,
    layer,
    machines,
    packages,
    reproducible,
    rootfs,
    system,
    uboot,
)
from refimage.lock import locked
from refimage.progress import BuildError, run, say, step

TOP = Path(__file__).resolve().parent.parent
BUILDER = Path(__file__).resolve().parent
DISK_NAME = "twelvefactor-refimage.img"
ROOTFS_NAME = "rootfs.ext4"  # slot A's file system, kept for the .swu
ROOTFS_LABEL = "rootfs-a"
FIRMWARE_NAME = "u-boot.bin"  # arm64: what QEMU's -bios loads (U-Boot; x86-64 boots OVMF)
MANIFEST = "manifest.json"
BUILD_LOG = "build.log"  # in the cache: every build step of the machine appends here
KEEP_IMAGES = 2  # older cached images are removed


@dataclass(frozen=True)
class Image:
    directory: Path
    disk: Path  # the bootable GPT disk
    rootfs: Path  # the ext4 image of rootfs-a
    manifest: dict[str, object]


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def base_key(machine: str = machines.DEFAULT) -> str:
    # the package list comes from the layer (refimage/data/yocto-debian.toml)
    return _sha(
        (BUILDER / "packages.py").read_bytes(),
        (BUILDER / "rootfs.py").read_bytes(),
        packages.arch(machine).encode(),
        " ".join(packages.for_machine(machine)).encode(),
    )


def boot_inputs(top: Path, machine: str) -> list[Path]:
    """The layer files the machine's bootloader and its ESP are made from."""
    if machines.get(machine).bootloader == "grub":
        return [layer.grub_cfg(top)]
    return [*uboot.inputs(), *uboot.fragments(machine)]


def image_key(
    base: str,
    files: list[layer.DeviceFile],
    units: list[str],
    boot: list[Path],
    top: Path,
    console_login: bool,
    machine: str = machines.DEFAULT,
) -> str:
    parts = [base.encode(), b"console_login=%d" % console_login, machine.encode()]
    parts += [p.read_bytes() for p in boot]
    parts += [(top / system.DISTRO_CONF).read_bytes()]  # os-release's VERSION_ID
    parts += [p.read_bytes() for p in sorted(BUILDER.glob("*.py"))]
    # what decides the kept kernel modules: the layer's kernel fragment and the
    # image's package closure (its data files and the module that reads them)
    parts += [(top / "meta-twelvefactor/recipes-kernel/linux/files/twelvefactor.cfg").read_bytes()]
    # (image_contents.py and layer_files.py are among BUILDER's *.py above)
    parts += [p.read_bytes() for p in sorted((BUILDER / "data").glob("*.*"))]
    parts += [f"{f.destination} {f.mode:o} {f.digest()}".encode() for f in files]
    parts += [" ".join(units).encode()]
    for src in agent.source_files(top / "agent"):
        parts += [str(src.relative_to(top)).encode(), src.read_bytes()]
    return _sha(*parts)


def _base_tree(out: Path, log: Path, machine: str) -> Path:
    key = base_key(machine)[:16]
    base = out / f"base-{key}"
    done = base / "done"
    if done.exists():
        say(f"base rootfs: cached ({base.name})")
        return base / "root"
    for old in out.glob("base-*"):
        rootfs.remove_tree(old)
    arch = packages.arch(machine)
    with step(f"base rootfs: mmdebstrap (Debian {packages.SUITE} {arch} packages)"):
        base.mkdir(parents=True)
        rootfs.build_base(base / "root", out / "apt-cache", log, machine)
        done.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return base / "root"


def _prune(out: Path, keep: Path) -> None:
    images = sorted(out.glob("image-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [p for p in images if p != keep][KEEP_IMAGES - 1 :]:
        rootfs.remove_tree(old)


def _load(directory: Path) -> Image:
    manifest = json.loads((directory / MANIFEST).read_text())
    return Image(directory, directory / DISK_NAME, directory / ROOTFS_NAME, manifest)


def default_out(machine: str = machines.DEFAULT) -> Path:
    """Where an image for `machine` is built and cached (one folder per machine)."""
    suffix = "" if machine == machines.DEFAULT else f"-{machine}"
    return TOP / "build" / f"refimage{suffix}"


def build(
    out: Path, *, top: Path = TOP, console_login: bool = True, machine: str = machines.DEFAULT
) -> Image:
    """The reference image for the current sources, built or taken from the cache."""
    machines.get(machine)
    out = out.resolve()
    with locked(out):
        return _build(out, top, console_login, machine)


def _build(out: Path, top: Path, console_login: bool, machine: str) -> Image:
    log = out / BUILD_LOG
    files = layer.device_files(top, machine)
    units = layer.enabled_units(top)
    boot = boot_inputs(top, machine)
    firmware = uboot.build(out, log) if machines.get(machine).bootloader == "uboot" else None
    base = _base_tree(out, log, machine)
    key = image_key(base_key(machine), files, units, boot, top, console_login, machine)
    if firmware is not None:
        key = _sha(key.encode(), firmware.binary.read_bytes())
    key = key[:16]
    directory = out / f"image-{key}"
    if (directory / MANIFEST).exists():
        say(f"image: cached ({directory.name})")
        os.utime(directory)
        _link_latest(out, directory)
        return _load(directory)
    rootfs.remove_tree(directory)
    work = out / "work"
    rootfs.remove_tree(work)
    work.mkdir()
    sizes = disk.offsets()
    tmp = out / f"tmp-{key}"
    rootfs.remove_tree(tmp)
    tmp.mkdir()
    made = build_rootfs(
        base,
        work,
        tmp / ROOTFS_NAME,
        top=top,
        console_login=console_login,
        log=log,
        machine=machine,
    )
    distro = str(system.distro_variables(top).get("DISTRO"))
    epoch = made.fixed.epoch
    data_fixed = disk.Reproducible(
        epoch, reproducible.fs_uuid(distro, "data"), reproducible.hash_seed(distro, "data")
    )
    with step("file systems: data, ESP (mtools)"):
        disk.make_ext4(None, work / "data.ext4", "data", sizes["data"][1], log, data_fixed)
        if firmware is None:
            efi = work / "BOOTX64.EFI"
            grub.make_efi(layer.grub_cfg(top), efi, log)
            env = work / "grubenv"
            env.write_bytes(grub.env_block(grub.INITIAL_ENV))
            esp = {"EFI/BOOT/BOOTX64.EFI": efi, "grub/grubenv": env}
        else:
            esp = uboot.esp_files(firmware, work, log, machine)
            shutil.copyfile(firmware.binary, tmp / FIRMWARE_NAME)
        disk.make_esp(
            work / "esp.vfat",
            sizes["esp"][1],
            esp,
            log,
            (epoch, reproducible.fat_volume_id(distro, "esp")),
        )
    with step("disk: GPT (sfdisk) and partitions (dd conv=sparse)"):
        image = tmp / DISK_NAME
        disk.partition_table(image, ids=reproducible.gpt_ids(distro, list(sizes)))
        disk.write_into(image, work / "esp.vfat", *sizes["esp"])
        disk.write_into(image, tmp / ROOTFS_NAME, *sizes["rootfs-a"])
        disk.write_into(image, work / "data.ext4", *sizes["data"])
        manifest: dict[str, object] = {
            "key": key,
            "machine": machine,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "console_login": console_login,
            "layer_files": [[f.destination, f"{f.mode:04o}", f.digest()] for f in files],
            "enabled_units": units,
            "agent_scripts": made.scripts,
            "kernel_modules": made.modules,
            "source_date_epoch": made.fixed.epoch,
            "rootfs_uuid": made.fixed.uuid,
            "rootfs_hash_seed": made.fixed.hash_seed,
            "packages": list(packages.for_machine(machine)),
            "partitions": {name: list(v) for name, v in sizes.items()},
            "boot_files": [str(p) for p in boot],
            "esp": sorted(esp),
        }
        if firmware is not None:
            manifest["firmware"] = {"file": FIRMWARE_NAME, **firmware.manifest}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        tmp.rename(directory)
    rootfs.remove_tree(work)
    _prune(out, directory)
    _link_latest(out, directory)
    return _load(directory)


@dataclass(frozen=True)
class Rootfs:
    """What build_rootfs made, for the manifest."""

    image: Path
    modules: dict[str, str]
    scripts: list[str]
    fixed: disk.Reproducible


def rootfs_settings(top: Path = TOP) -> disk.Reproducible:
    """SOURCE_DATE_EPOCH, UUID and hash seed of rootfs-a (refimage/reproducible.py)."""
    distro = system.distro_variables(top).get("DISTRO")
    if not distro:
        raise BuildError(f"{top / system.DISTRO_CONF} sets no DISTRO")
    return disk.Reproducible(
        epoch=reproducible.source_date_epoch(top),
        uuid=reproducible.fs_uuid(distro, ROOTFS_LABEL),
        hash_seed=reproducible.hash_seed(distro, ROOTFS_LABEL),
    )


def build_rootfs(
    base: Path,
    work: Path,
    out_image: Path,
    *,
    top: Path = TOP,
    console_login: bool = True,
    log: Path,
    machine: str = machines.DEFAULT,
) -> Rootfs:
    """Slot A's ext4 image from the cached base tree: the same bytes for the same inputs.

    The tree is assembled in `work`/root (which must not exist yet) and left there."""
    fixed = rootfs_settings(top)
    files = layer.device_files(top, machine)
    units = layer.enabled_units(top)
    stage = work / "root"
    with step("root tree: copy of the base"):
        rootfs.unmount_below(base)  # a /proc mmdebstrap left behind is not copied
        run(["cp", "-a", "--reflink=auto", base, stage])
    with step("root tree: only the kernel modules the layer's image would have"):
        modules = kmodules.keep(stage, machine)
    with step(f"root tree: {len(files)} layer files, the agent, system settings"):
        layer.install(files, stage)
        scripts = agent.install(top / "agent", stage)
        for params in layer.group_params(top):
            # -f: a group Debian's packages already made (swupdate) is kept, as
            # useradd.bbclass skips a group that exists
            system.chroot_quiet(stage, "groupadd", "-f", *params)
        for params in layer.user_params(top):
            system.chroot_quiet(stage, "useradd", *params)
        system.configure(stage, console_login=console_login, machine=machine)
        system.enable(stage, units)
    with step(f"root tree: reproducible (SOURCE_DATE_EPOCH={fixed.epoch})"):
        reproducible.remove_noise(stage)
        reproducible.shadow_last_change(stage, fixed.epoch)
        reproducible.clamp_mtimes(stage, fixed.epoch)
    with step("file system: rootfs-a (mkfs.ext4 -d)"):
        disk.make_ext4(stage, out_image, ROOTFS_LABEL, disk.offsets()["rootfs-a"][1], log, fixed)
    return Rootfs(out_image, modules, scripts, fixed)


def _link_latest(out: Path, directory: Path) -> None:
    link = out / "latest"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(directory.name)


def require_root() -> None:
    if os.geteuid() != 0:
        raise BuildError("building the image needs root (mmdebstrap --mode=root, chroot)")
