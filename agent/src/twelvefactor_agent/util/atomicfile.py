"""Replace a file so that a crash or a power cut leaves the old or the new content.

Write a temporary file beside it, fsync, rename over it, then fsync the
folder so the rename itself is durable. Used for the boot environment, the
managed configuration and the state file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # some file systems (vfat on old kernels) refuse fsync on a directory
        with contextlib.suppress(OSError):
            os.fsync(dfd)
    finally:
        os.close(dfd)
