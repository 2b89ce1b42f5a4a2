"""Step lines with elapsed times, and subprocess calls that fail with their output."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

_START = time.monotonic()


class BuildError(RuntimeError):
    """A build step failed; the message says which command and why."""


def say(message: str) -> None:
    print(f"[refimage {time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


@contextmanager
def step(name: str) -> Iterator[None]:
    say(f"{name} ...")
    began = time.monotonic()
    yield
    say(f"{name}: done in {time.monotonic() - began:.1f} s")


def run(
    argv: Sequence[str | Path],
    *,
    log: Path | None = None,
    cwd: Path | None = None,
    input_bytes: bytes | None = None,
) -> bytes:
    """Run a command; raise BuildError with the tail of its output when it fails.

    With `log`, the output goes to that file (long tools such as mmdebstrap)
    and stdout is not returned.
    """
    args = [str(a) for a in argv]
    if log is not None:
        with log.open("ab") as out:
            out.write(f"$ {' '.join(args)}\n".encode())
            out.flush()
            done = subprocess.run(args, cwd=cwd, input=input_bytes, stdout=out, stderr=out)
        if done.returncode != 0:
            tail = log.read_bytes()[-3000:].decode(errors="replace")
            raise BuildError(f"{args[0]} failed ({done.returncode}); end of {log}:\n{tail}")
        return b""
    proc = subprocess.run(args, cwd=cwd, input=input_bytes, capture_output=True)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout)[-3000:].decode(errors="replace")
        raise BuildError(f"{' '.join(args)} failed ({proc.returncode}):\n{err}")
    return proc.stdout
