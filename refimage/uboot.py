"""U-Boot for the arm64 reference image: Debian's u-boot source with the layer's fragments.

Debian's `u-boot-qemu` binary keeps its environment in flash and has no boot
counter (CONFIG_BOOTCOUNT_LIMIT unset), so it cannot run the layer's A/B
contract: the environment in two files on the ESP, counted boots, altbootcmd
past bootlimit. So the reference image's U-Boot is built here from the
source Debian builds `u-boot-qemu` from (the suite's `u-boot` source package,
its patch series applied) for the same target, `qemu_arm64_defconfig`, with
the configuration fragments the layer's u-boot bbappend adds for qemuarm64 and
Debian's aarch64 cross compiler. An option whose name changed between that
U-Boot and the one wrynose builds is given under its older name (RENAMED);
every option of the fragments is then checked in the resulting .config, and
one that did not take stops the build rather than leave a binary that quietly
lacks it. The result, with U-Boot's built-in environment (`u-boot-initial-env`,
which the layer's twelvefactor-uboot-env recipe starts from), is cached
under a hash of the fragments and this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from refimage import layer_files as lf
from refimage import packages
from refimage.progress import BuildError, run, say, step

MACHINE = "qemuarm64"
DEFCONFIG = "qemu_arm64_defconfig"
CROSS_COMPILE = "aarch64-linux-gnu-"
SOURCE_PACKAGE = "u-boot"
UBOOT_APPEND = lf.LAYER / "recipes-bsp/u-boot/u-boot_%.bbappend"
BINARY = "u-boot.bin"
INITIAL_ENV = "u-boot-initial-env"
MANIFEST = "uboot.json"

# wrynose's name -> the name in the suite's U-Boot (2025.01): U-Boot 2025.10
# renamed SYS_REDUNDAND_ENVIRONMENT to ENV_REDUNDANT.
RENAMED = {"CONFIG_ENV_REDUNDANT": "CONFIG_SYS_REDUNDAND_ENVIRONMENT"}

_OPTION = re.compile(r"^(CONFIG_[A-Z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Z0-9_]+) is not set$")


@dataclass(frozen=True)
class UBoot:
    binary: Path  # u-boot.bin for QEMU's -bios
    initial_env: Path  # u-boot-initial-env: the built-in environment, name=value lines
    manifest: dict[str, object]


def fragments(machine: str = MACHINE) -> list[Path]:
    """The configuration fragments the layer's u-boot bbappend adds for `machine`."""
    out = []
    for name in lf.src_uri_files(UBOOT_APPEND, machine):
        source = lf.find_source(UBOOT_APPEND, name, machine)
        if source is None:
            raise BuildError(f"{UBOOT_APPEND.name}: {name} not found")
        out.append(source)
    if not out:
        raise BuildError(f"{UBOOT_APPEND.name} adds no fragment for {machine}")
    return out


def parse_config(text: str) -> dict[str, str]:
    """CONFIG_ options of a fragment or .config: name -> value ("n" when not set)."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        if m := _OPTION.match(line):
            options[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            options[m.group(1)] = "n"
    return options


def wanted_options(machine: str = MACHINE) -> dict[str, str]:
    """What the fragments set, under the names of the suite's U-Boot."""
    options: dict[str, str] = {}
    for fragment in fragments(machine):
        for name, value in parse_config(fragment.read_text()).items():
            options[RENAMED.get(name, name)] = value
    return options


def missing_options(wanted: dict[str, str], config: dict[str, str]) -> dict[str, str]:
    """Options whose value in `config` (a .config) is not the wanted one: name -> what it is."""
    return {
        name: config.get(name, "n")
        for name, value in wanted.items()
        if config.get(name, "n") != value
    }


def key() -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    for fragment in fragments():
        h.update(fragment.name.encode() + b"\0" + fragment.read_bytes())
    h.update(packages.SUITE.encode())
    return h.hexdigest()[:16]


def _apt_options(work: Path) -> list[str]:
    sources = work / "sources.list"
    sources.write_text(f"deb-src {packages.MIRROR} {packages.SUITE} main\n")
    (work / "lists/partial").mkdir(parents=True, exist_ok=True)
    return [
        "-o", f"Dir::Etc::SourceList={sources}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={work / 'lists'}",
    ]  # fmt: skip


def _source_files(shown: str) -> tuple[str, str, dict[str, str]]:
    """(version, pool directory, file name -> sha256) of the first source stanza."""
    stanza = shown.split("\n\n")[0]
    version = re.search(r"^Version: (\S+)$", stanza, re.M)
    directory = re.search(r"^Directory: (\S+)$", stanza, re.M)
    block = re.search(r"^Checksums-Sha256:\n((?: .*\n?)+)", stanza, re.M)
    if not (version and directory and block):
        raise BuildError(f"{packages.SUITE} has no usable source package {SOURCE_PACKAGE}")
    sums = {}
    for line in block.group(1).splitlines():
        digest, _, name = line.split()
        sums[name] = digest
    return version.group(1), directory.group(1), sums


def fetch_source(work: Path, log: Path) -> tuple[Path, str]:
    """The suite's u-boot source package, unpacked with Debian's patches; (tree, version).

    The upstream and Debian tarballs are fetched by themselves and checked against
    the SHA-256 of the Sources index apt verified (the mirror here does not serve
    every .dsc, which `apt-get source` insists on)."""
    apt = _apt_options(work)
    run(["apt-get", *apt, "-q", "update"], log=log)
    shown = run(["apt-cache", *apt, "showsrc", "--only-source", SOURCE_PACKAGE]).decode()
    version, directory, sums = _source_files(shown)
    files = work / "files"
    files.mkdir()
    tarballs = {}
    for kind in ("orig", "debian"):
        names = [n for n in sums if re.search(rf"\.{kind}\.tar\.[a-z0-9]+$", n)]
        if len(names) != 1:
            raise BuildError(f"{SOURCE_PACKAGE} {version}: not one {kind} tarball: {sorted(sums)}")
        name = names[0]
        target = files / name
        run(["curl", "-fsS", "--retry", "3", "-o", target,
             f"{packages.MIRROR}/{directory}/{name}"], log=log)  # fmt: skip
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        if digest != sums[name]:
            raise BuildError(f"{name}: sha256 {digest}, the Sources index says {sums[name]}")
        tarballs[kind] = target
    tree = work / "src"
    tree.mkdir()
    run(["tar", "-xf", tarballs["orig"], "-C", tree, "--strip-components=1"])
    run(["tar", "-xf", tarballs["debian"], "-C", tree])
    series = tree / "debian/patches/series"
    for line in series.read_text().splitlines():
        name = line.split("#")[0].strip()
        if name:
            run(["patch", "-p1", "--forward", "--quiet", "-i", series.parent / name], cwd=tree)
    return tree, version


def build(out: Path, log: Path) -> UBoot:
    """The reference image's U-Boot, built or taken from the cache in `out`."""
    done = out / f"uboot-{key()}"
    if (done / MANIFEST).exists():
        say(f"U-Boot: cached ({done.name})")
        return _load(done)
    for old in out.glob("uboot-*"):
        shutil.rmtree(old)
    work = out / "uboot-work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    with step(f"U-Boot: Debian's {SOURCE_PACKAGE} source ({packages.SUITE})"):
        tree, version = fetch_source(work, log)
    wanted = wanted_options()
    objects = work / "build"
    make: list[str | Path] = ["make", "-C", tree, f"O={objects}", f"CROSS_COMPILE={CROSS_COMPILE}"]
    with step(f"U-Boot: {DEFCONFIG} and the layer's fragments"):
        run([*make, DEFCONFIG], log=log)
        config = objects / ".config"
        text = config.read_text()
        for fragment in fragments():
            text += f"\n# {fragment.name}\n"
            for line in fragment.read_text().splitlines():
                option = _OPTION.match(line) or _UNSET.match(line)
                name = option.group(1) if option else None
                text += line.replace(name, RENAMED[name]) if name in RENAMED else line
                text += "\n"
        config.write_text(text)
        run([*make, "olddefconfig"], log=log)
        missing = missing_options(wanted, parse_config(config.read_text()))
        if missing:
            raise BuildError(
                f"U-Boot {version} did not take the layer's options (wanted -> got): "
                + ", ".join(f"{n}={wanted[n]} -> {v}" for n, v in sorted(missing.items()))
            )
    with step(f"U-Boot: build {BINARY} ({CROSS_COMPILE}gcc)"):
        run([*make, f"-j{os.cpu_count() or 1}", BINARY, INITIAL_ENV], log=log)
    tmp = out / f"uboot-tmp-{key()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    shutil.copyfile(objects / BINARY, tmp / BINARY)
    shutil.copyfile(objects / INITIAL_ENV, tmp / INITIAL_ENV)
    manifest = {
        "source": f"{SOURCE_PACKAGE} {version} ({packages.SUITE})",
        "defconfig": DEFCONFIG,
        "fragments": [f.name for f in fragments()],
        "renamed": RENAMED,
        "options": wanted,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.rename(done)
    shutil.rmtree(work)
    return _load(done)


def _load(directory: Path) -> UBoot:
    manifest = json.loads((directory / MANIFEST).read_text())
    return UBoot(directory / BINARY, directory / INITIAL_ENV, manifest)


# -- the ESP, as the layer's recipes fill it ---------------------------------------

BOOT_DIR = lf.LAYER / "recipes-bsp/twelvefactor-boot-uboot"
BOOT_CMD = BOOT_DIR / "files/boot.cmd"
AB_ENV = BOOT_DIR / "files/uboot-ab.env"
ENVIMAGE = BOOT_DIR / "files/twelvefactor-uboot-envimage"
ENV_RECIPE = BOOT_DIR / "twelvefactor-uboot-env_1.0.bb"


def boot_script(out: Path, log: Path) -> Path:
    """boot.scr as twelvefactor-boot-uboot's do_compile makes it."""
    script = out / "boot.scr"
    run(["mkimage", "-A", "arm64", "-T", "script", "-C", "none", "-n", "twelvefactor A/B",
         "-d", BOOT_CMD, script], log=log)  # fmt: skip
    return script


def environment(initial_env: Path, out: Path, log: Path, *extra: str) -> Path:
    """The environment image as twelvefactor-uboot-env's do_compile makes it: the
    layer's script on U-Boot's built-in environment (and `extra` NAME=VALUE over it,
    as the recipe passes tf_dtoverlays)."""
    size = lf._assignments(ENV_RECIPE.read_text()).get("TWELVEFACTOR_UBOOT_ENV_SIZE")
    if size is None:
        raise BuildError(f"{ENV_RECIPE.name} sets no TWELVEFACTOR_UBOOT_ENV_SIZE")
    image = out / "uboot.env"
    run(["env", "MKENVIMAGE=mkenvimage", "sh", ENVIMAGE, initial_env, AB_ENV, size, image,
         *extra], log=log)  # fmt: skip
    return image


def esp_files(built: UBoot, work: Path, log: Path, machine: str = MACHINE) -> dict[str, Path]:
    """ESP path -> file: IMAGE_BOOT_FILES of the layer's image for `machine`, each
    built here the way its recipe builds it."""
    deployed = {
        "boot.scr": boot_script(work, log),
        "twelvefactor/uboot.env": environment(built.initial_env, work, log),
    }
    files = {}
    for entry in lf.image_boot_files(machine):
        source, _, dest = entry.partition(";")
        if source not in deployed:
            raise BuildError(f"IMAGE_BOOT_FILES of {machine}: nothing here builds {source}")
        files[dest or Path(source).name] = deployed[source]
    return files


def inputs() -> list[Path]:
    """The layer files the ESP is made from (for the image's cache key)."""
    return [BOOT_CMD, AB_ENV, ENVIMAGE, ENV_RECIPE, lf.IMAGE_RECIPE]
