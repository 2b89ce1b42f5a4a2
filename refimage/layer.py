"""The layer's device files, as refimage/layer_files.py reads them from the recipes.

layer_files.py lists (source, destination, mode) for every file the
meta-twelvefactor recipes install; this builder installs exactly that list,
and the layer tests check it against the recipes, so there is one list. The
systemd units to enable come from the recipes' SYSTEMD_SERVICE variables.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from refimage import layer_files
from refimage.progress import BuildError

LAYER = Path("meta-twelvefactor")


@dataclass(frozen=True)
class DeviceFile:
    source: Path  # absolute, in the repository
    destination: str  # absolute path on the device
    mode: int

    def digest(self) -> str:
        return hashlib.sha256(self.source.read_bytes()).hexdigest()


def device_files(top: Path, machine: str = layer_files.DEFAULT_MACHINE) -> list[DeviceFile]:
    """Every file the layer's recipes install for `machine`."""
    if top.resolve() != layer_files.REPO:
        raise BuildError(f"the layer's files are read from {layer_files.REPO}, not {top}")
    out = []
    for f in layer_files.device_files(machine):
        if not f.source.is_file():
            raise BuildError(f"{f.recipe}: source {f.source} does not exist")
        if not f.dest.startswith("/") or ".." in f.dest.split("/"):
            raise BuildError(f"{f.recipe}: destination {f.dest!r} is not absolute")
        out.append(DeviceFile(f.source, f.dest, f.mode))
    if not out:
        raise BuildError("the layer's recipes install no files")
    return out


def install(files: list[DeviceFile], root: Path) -> None:
    for f in files:
        dest = root / f.destination.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink():
            dest.unlink()
        shutil.copyfile(f.source, dest)
        dest.chmod(f.mode)


_VAR = re.compile(r'^SYSTEMD_SERVICE:\$\{PN\}\s*[+:.]?=\s*"((?:[^"\\]|\\\n)*)"', re.M)
_AUTO = re.compile(r'^SYSTEMD_AUTO_ENABLE(?::\$\{PN\})?\s*[?:]?=\s*"(\w+)"', re.M)


def enabled_units(top: Path) -> list[str]:
    """Units the recipes enable (SYSTEMD_SERVICE, unless SYSTEMD_AUTO_ENABLE=disable)."""
    units: list[str] = []
    for recipe in sorted((top / LAYER).rglob("*.bb")) + sorted((top / LAYER).rglob("*.bbappend")):
        text = recipe.read_text()
        auto = _AUTO.search(text)
        if auto and auto.group(1) == "disable":
            continue
        for match in _VAR.finditer(text):
            units += match.group(1).replace("\\\n", " ").split()
    return units


def grub_cfg(top: Path) -> Path:
    """The layer's grub.cfg, the one grub-mkstandalone embeds."""
    found = sorted(p for p in (top / LAYER).rglob("grub.cfg") if p.is_file())
    if len(found) != 1:
        raise BuildError(f"expected one grub.cfg in {top / LAYER}, found {found}")
    return found[0]


def _recipe_params(top: Path, variable: str) -> list[list[str]]:
    pattern = re.compile(rf'^{variable}:\$\{{PN\}}\s*[+:.]?=\s*"((?:[^"\\]|\\\n)*)"', re.M)
    out: list[list[str]] = []
    for recipe in sorted((top / LAYER).rglob("*.bb")) + sorted((top / LAYER).rglob("*.bbappend")):
        for match in pattern.finditer(recipe.read_text()):
            for command in match.group(1).replace("\\\n", " ").split(";"):
                args = command.split()
                if args:
                    out.append(args)
    return out


def group_params(top: Path) -> list[list[str]]:
    """groupadd arguments from the recipes' GROUPADD_PARAM (useradd class)."""
    return _recipe_params(top, "GROUPADD_PARAM")


def user_params(top: Path) -> list[list[str]]:
    """useradd arguments from the recipes' USERADD_PARAM (useradd class)."""
    return _recipe_params(top, "USERADD_PARAM")
