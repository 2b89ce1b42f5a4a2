"""One builder at a time per cache folder (an advisory lock file in it).

The boot tier may run in two pytest workers that both ask for the reference
image and its updates; a second caller waits, then finds the result cached.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold `folder`/.lock exclusively (not re-entrant: never nest two for one folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
