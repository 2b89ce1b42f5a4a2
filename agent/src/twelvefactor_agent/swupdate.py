"""Hand a downloaded .swu to SWUpdate through SWUpdate's own client.

The agent stays unprivileged. SWUpdate's daemon (root, socket-activated by
systemd) checks the signature and the hardware, writes the idle slot and then
the boot environment; the agent only reaches its control socket (mode 0660,
group swupdate) by running `swupdate-client` and feeding it the file on
stdin, so the bytes fed give the percent.

`dry_run=True` makes SWUpdate run every check with its dummy handler (the
signature of sw-description, the hardware, each image's sha256 over the
decompressed stream) while writing nothing: the agent runs it first, so that
a tampered or unsigned file is refused before a byte reaches the idle slot
(the raw handler streams straight to the partition and finds a bad hash only
at the end).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

CLIENT = "swupdate-client"
# Unless built with fixed paths, the client looks for the daemon's sockets in
# $RUNTIME_DIRECTORY, else $TMPDIR. systemd sets RUNTIME_DIRECTORY for the
# agent (its own /run/twelvefactor), so the client gets both set to SWUpdate's.
# The layer puts the sockets in /run/swupdate (Debian's package does too).
SOCKET_DIR = "/run/swupdate"
CHUNK = 64 * 1024
TAIL_LINES = 6  # lines of SWUpdate's messages kept for a failure reason
MAX_REASON = 400

Progress = Callable[[int, int], None]  # (bytes handed over, total)


class InstallError(Exception):
    """SWUpdate refused or failed; the message says why, in SWUpdate's words."""


def install(
    path: Path,
    *,
    dry_run: bool,
    progress: Progress = lambda done, total: None,
    client: str = CLIENT,
    socket_dir: str = SOCKET_DIR,
    timeout: float = 3600.0,
) -> None:
    """Install `path` (or only check it, `dry_run`); InstallError if SWUpdate says no."""
    total = path.stat().st_size
    argv = [client, "-v"] + (["-d"] if dry_run else []) + ["-"]
    env = dict(os.environ, TMPDIR=socket_dir, RUNTIME_DIRECTORY=socket_dir)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
    except OSError as exc:
        raise InstallError(f"cannot run {client}: {exc.strerror or exc}") from None
    assert proc.stdin is not None and proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=_collect, args=(proc.stdout, lines), daemon=True)
    reader.start()
    fed = 0
    try:
        with path.open("rb") as src:
            while chunk := src.read(CHUNK):
                proc.stdin.write(chunk)
                fed += len(chunk)
                progress(fed, total)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # SWUpdate stopped reading (it refused the file): its exit status says why
    except OSError as exc:
        proc.kill()
        proc.wait()
        raise InstallError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise InstallError(f"{client} did not finish within {timeout:.0f} s") from None
    reader.join(10)
    if rc != 0 or not any("successful" in line for line in lines):
        raise InstallError(_reason(lines, rc, fed, total))


def _collect(stream: IO[bytes], lines: list[str]) -> None:
    for raw in stream:
        text = raw.decode(errors="replace").strip()
        if text:
            lines.append(text)
            del lines[:-200]


def _reason(lines: list[str], rc: int, fed: int, total: int) -> str:
    """SWUpdate's own error lines if it gave any, else the last lines it printed."""
    errors = [line for line in lines if "ERROR" in line.upper()]
    shown = (errors or lines)[-TAIL_LINES:]
    text = " | ".join(line.removeprefix("Status: ").strip() for line in shown) or "no output"
    where = f"after {fed} of {total} bytes" if fed < total else "after the whole file"
    return f"SWUpdate refused the file ({where}, exit {rc}): {text}"[:MAX_REASON]
