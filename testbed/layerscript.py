"""A Python script the layer installs on the device, loaded for the tests of its pure parts."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


def load(script: Path, name: str) -> ModuleType:
    """`script` as a module named `name`. Executed, not imported: an import would leave
    __pycache__ in the layer's files folder (and the file has no .py suffix)."""
    module = ModuleType(name)
    module.__file__ = str(script)
    exec(compile(script.read_text(encoding="utf-8"), str(script), "exec"), module.__dict__)
    return module
