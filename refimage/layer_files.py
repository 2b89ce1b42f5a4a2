"""The layer's device files, derived from its recipes.

Parses every recipe and append of meta-twelvefactor the way the tests and the
reference-image builder need it: which files a recipe fetches (SRC_URI
`file://`), and which files its do_install puts where, with which mode. This
is not BitBake: it reads the plain `install -m MODE SRC DEST` lines and expands
the handful of variables they use, so the recipes must keep to that form (the
tests fail on an install line it cannot resolve).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYER = REPO / "meta-twelvefactor"
DEFAULT_MACHINE = "qemux86-64"

# BitBake paths as they are on a usrmerge systemd image (oe-core's defaults)
PATH_VARS = {
    "sysconfdir": "/etc",
    "bindir": "/usr/bin",
    "sbindir": "/usr/sbin",
    "libdir": "/usr/lib",
    "nonarch_libdir": "/usr/lib",
    "libexecdir": "/usr/libexec",
    "datadir": "/usr/share",
    "systemd_unitdir": "/usr/lib/systemd",
    "systemd_system_unitdir": "/usr/lib/systemd/system",
}
# overrides per machine (the ones the layer uses)
MACHINE_OVERRIDES = {
    "qemux86-64": ["qemux86-64", "x86-64", "qemuall"],
    "qemuarm64": ["qemuarm64", "aarch64", "qemuall"],
    "raspberrypi4-64": ["raspberrypi4-64", "rpi", "aarch64"],
}


@dataclass(frozen=True)
class DeviceFile:
    recipe: str
    source: Path  # file in this repository
    dest: str  # absolute path on the device
    mode: int


class RecipeParseError(ValueError):
    """A recipe line this parser cannot resolve."""


def recipe_files() -> list[Path]:
    return sorted(
        p for p in LAYER.rglob("*") if p.suffix in {".bb", ".bbappend", ".bbclass", ".inc"}
    )


def _logical_lines(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def _assignments(text: str) -> dict[str, str]:
    """Simple `VAR = "..."` (also ?=, ??=, :=) assignments without overrides."""
    out: dict[str, str] = {}
    for line in _logical_lines(text):
        m = re.match(r'^([A-Z][A-Z0-9_]*)\s*(\?\?=|\?=|:=|=)\s*"(.*)"\s*$', line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(3)
    return out


def layer_variables() -> dict[str, str]:
    values = {"TWELVEFACTOR_LAYERDIR": str(LAYER), "TWELVEFACTOR_REPO_DIR": str(REPO)}
    values.update(_assignments((LAYER / "conf/distro/twelvefactor.conf").read_text()))
    return values


def expand(text: str, values: dict[str, str]) -> str:
    for _ in range(10):
        new = re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: values.get(m.group(1), m.group(0)), text)
        if new == text:
            break
        text = new
    return text


def _applies(overrides: list[str], machine: str) -> bool:
    active = {"twelvefactor", *MACHINE_OVERRIDES[machine]}
    return all(o in active or o in {"append", "prepend", "${PN}"} for o in overrides)


IMAGE_RECIPE = LAYER / "recipes-core/images/twelvefactor-image.bb"
# What meta-raspberrypi (wrynose, conf/machine/include/rpi-base.inc) puts on
# the boot partition with RPI_USE_U_BOOT = "1", besides firmware and DTBs:
# RPI_EXTRA_IMAGE_BOOT_FILES. The layer's image recipe adds to or removes from it.
RPI_EXTRA_BOOT_FILES = ["${KERNEL_IMAGETYPE}", "u-boot.bin;${SDIMG_KERNELIMAGE}", "boot.scr"]


def image_boot_files(machine: str) -> list[str]:
    """IMAGE_BOOT_FILES of twelvefactor-image on `machine` (the layer's assignments,
    appends and removes applied to the machine's default): "deployed[;on the ESP]"."""
    value = list(RPI_EXTRA_BOOT_FILES) if machine == "raspberrypi4-64" else []
    appends: list[str] = []
    removes: list[str] = []
    for line in _logical_lines(IMAGE_RECIPE.read_text()):
        m = re.match(r'^IMAGE_BOOT_FILES((?::[A-Za-z0-9_-]+)*)\s*=\s*"(.*)"', line)
        if not m:
            continue
        overrides = [o for o in m.group(1).split(":") if o]
        words = m.group(2).split()
        if "append" in overrides or "remove" in overrides:
            op = "append" if "append" in overrides else "remove"
            condition = [o for o in overrides if o != op]
            if _applies(condition, machine):
                (appends if op == "append" else removes).extend(words)
        elif _applies(overrides, machine):
            value = words
    return [w for w in value + appends if w not in removes]


def src_uri_files(recipe: Path, machine: str = DEFAULT_MACHINE) -> list[str]:
    """file:// names in SRC_URI (every override that applies to `machine`)."""
    names: list[str] = []
    for line in _logical_lines(recipe.read_text()):
        m = re.match(r"^SRC_URI((?::[A-Za-z0-9_${}-]+)*)\s*(\+=|=|\?=|\.=)\s*\"(.*)\"", line)
        if not m or not _applies([o for o in m.group(1).split(":") if o], machine):
            continue
        names += [
            u.split(";")[0][len("file://") :] for u in m.group(3).split() if u.startswith("file://")
        ]
    return names


def search_path(recipe: Path, machine: str = DEFAULT_MACHINE) -> list[Path]:
    """Where file:// names are looked up: FILESEXTRAPATHS, then <recipe dir>/files
    and <recipe dir>/<pn>, each with the machine subfolder first."""
    values = layer_variables() | {"THISDIR": str(recipe.parent)}
    roots: list[Path] = []
    for line in _logical_lines(recipe.read_text()):
        m = re.match(r'^FILESEXTRAPATHS:prepend(?::[a-z0-9_-]+)?\s*:=\s*"(.*)"', line)
        if m:
            roots += [Path(expand(p, values)) for p in m.group(1).split(":") if p]
    pn = recipe.name.split("_")[0].split(".")[0]
    roots += [recipe.parent / "files", recipe.parent / pn]
    return [d for root in roots for d in (root / machine, root)]


def find_source(recipe: Path, name: str, machine: str = DEFAULT_MACHINE) -> Path | None:
    for base in search_path(recipe, machine):
        if (base / name).exists():
            return base / name
    return None


def _install_bodies(recipe: Path, machine: str) -> list[str]:
    text = recipe.read_text()
    bodies = []
    for m in re.finditer(
        r"^do_install((?::[a-z0-9_-]+)*)\s*\(\)\s*\{\n(.*?)^\}", text, re.M | re.S
    ):
        overrides = [o for o in m.group(1).split(":") if o]
        if _applies(overrides, machine):
            bodies.append(m.group(2))
    return bodies


def device_files(machine: str = DEFAULT_MACHINE) -> list[DeviceFile]:
    """(recipe, source in the repository, destination on the device, mode) for
    every file the layer's recipes install, for one machine."""
    result: list[DeviceFile] = []
    for recipe in recipe_files():
        if recipe.suffix not in {".bb", ".bbappend"}:
            continue
        if "COMPATIBLE_HOST" in recipe.read_text():
            host = _assignments(recipe.read_text()).get("COMPATIBLE_HOST", "")
            arch = "x86_64" if "x86" in machine else "aarch64"
            if not re.match(host, f"{arch}-twelvefactor-linux"):
                continue
        values = layer_variables() | _assignments(recipe.read_text()) | PATH_VARS
        fetched = {Path(n).name: n for n in src_uri_files(recipe, machine)}
        for body in _install_bodies(recipe, machine):
            for line in _logical_lines(body):
                words = line.split()
                if not words or words[0] != "install" or "-d" in words:
                    continue
                m = re.match(r"^install\s+-m\s+([0-7]{3,4})\s+(\S+)\s+(\S+)\s*$", line.strip())
                if not m:
                    raise RecipeParseError(f"{recipe}: cannot read install line: {line.strip()}")
                mode = int(m.group(1), 8)
                src, dest = m.group(2), expand(m.group(3), values)
                if not dest.startswith("${D}"):
                    raise RecipeParseError(f"{recipe}: install destination outside ${{D}}: {dest}")
                dest = dest[len("${D}") :]
                source = _resolve_source(recipe, src, fetched, values, machine)
                result.append(DeviceFile(recipe.name, source, dest, mode))
    return result


def _resolve_source(
    recipe: Path, src: str, fetched: dict[str, str], values: dict[str, str], machine: str
) -> Path:
    for prefix in ("${UNPACKDIR}/", "${WORKDIR}/"):
        if src.startswith(prefix):
            rel = src[len(prefix) :]
            top = rel.split("/")[0]
            if top not in fetched and rel not in fetched.values():
                raise RecipeParseError(f"{recipe}: installs {src}, which SRC_URI does not fetch")
            found = find_source(recipe, rel, machine)
            if found is None:
                raise RecipeParseError(
                    f"{recipe}: {rel} not found in {search_path(recipe, machine)}"
                )
            return found
    if src.startswith("${S}/"):
        s_dir = values.get("S", "")
        if not s_dir.startswith("${UNPACKDIR}/"):
            raise RecipeParseError(f"{recipe}: S={s_dir!r} is not below UNPACKDIR")
        return _resolve_source(recipe, s_dir + "/" + src[len("${S}/") :], fetched, values, machine)
    if src.startswith("${B}/"):
        raise RecipeParseError(f"{recipe}: {src} is a build output, not a device file in the repo")
    path = Path(expand(src, values))
    if not path.is_absolute() or not path.exists():
        raise RecipeParseError(f"{recipe}: install source {src} does not resolve to a file")
    return path


if __name__ == "__main__":
    import sys

    for f in device_files(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MACHINE):
        print(f"{oct(f.mode)[2:]:>4} {f.dest}  <- {f.source.relative_to(REPO)}")
