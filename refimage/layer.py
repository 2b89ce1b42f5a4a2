"""The layer's device files, read from the list the layer tests keep.

tests/layer/layer_files.py lists (source, destination, mode) for every file
the meta-twelvefactor recipes install; this builder installs exactly that list
so there is one list, checked against the recipes by the layer tests. The
systemd units to enable come from the recipes' SYSTEMD_SERVICE variables.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from refimage.progress import BuildError

LIST_MODULE = Path("tests/layer/layer_files.py")
LAYER = Path("meta-twelvefactor")


@dataclass(frozen=True)
class DeviceFile:
    source: Path  # absolute, in the repository
    destination: str  # absolute path on the device
    mode: int

    def digest(self) -> str:
        return hashlib.sha256(self.source.read_bytes()).hexdigest()


def _load(top: Path) -> ModuleType:
    path = top / LIST_MODULE
    if not path.is_file():
        raise BuildError(f"{path} is missing: the layer's list of device files is needed")
    spec = importlib.util.spec_from_file_location("twelvefactor_layer_files", path)
    if spec is None or spec.loader is None:
        raise BuildError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is made
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _entries(module: ModuleType) -> Iterable[object]:
    for name in ("layer_files", "device_files"):
        fn = getattr(module, name, None)
        if callable(fn):
            return list(fn())
    for name in ("LAYER_FILES", "DEVICE_FILES", "FILES"):
        value = getattr(module, name, None)
        if value is not None:
            return list(value)
    raise BuildError(f"{LIST_MODULE} has no layer_files() nor LAYER_FILES")


def _fields(entry: object) -> tuple[object, object, object]:
    if isinstance(entry, tuple | list) and len(entry) == 3:
        return entry[0], entry[1], entry[2]
    src = getattr(entry, "source", None)
    dest = getattr(entry, "destination", getattr(entry, "dest", None))
    mode = getattr(entry, "mode", None)
    if src is None or dest is None or mode is None:
        raise BuildError(f"{LIST_MODULE}: cannot read (source, destination, mode) from {entry!r}")
    return src, dest, mode


def device_files(top: Path) -> list[DeviceFile]:
    out = []
    for entry in _entries(_load(top)):
        src, dest, mode = _fields(entry)
        source = Path(str(src))
        if not source.is_absolute():
            source = top / source
        if not source.is_file():
            raise BuildError(f"{LIST_MODULE}: source {source} does not exist")
        destination = str(dest)
        if not destination.startswith("/") or ".." in destination.split("/"):
            raise BuildError(f"{LIST_MODULE}: destination {destination!r} is not absolute")
        file_mode = int(mode, 8) if isinstance(mode, str) else int(str(mode))
        out.append(DeviceFile(source, destination, file_mode))
    if not out:
        raise BuildError(f"{LIST_MODULE} lists no files")
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
