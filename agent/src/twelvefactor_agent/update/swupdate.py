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

`swupdate-client` (up to SWUpdate 2026.05 at least) can hang: its main
thread waits on a condition variable that the thread talking to the daemon
may already have signalled, when the daemon refuses a file very quickly.
The agent therefore kills a client that takes no data, or does not exit
once it has it all, and runs it once more (the layer also patches the
client, but other builds, Debian's among them, have the bug).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
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
POLL = 0.5  # seconds between progress reports
# The client reads as SWUpdate checks and writes (~10 MB/s under TCG); a
# board's flash may hold the raw handler for seconds, not for a minute. After
# the last byte SWUpdate may still sync a whole partition to slow flash.
STALL_TIMEOUT = 60.0
FINISH_TIMEOUT = 300.0
ATTEMPTS = 2  # a stuck client is killed and run once more

log = logging.getLogger("twelvefactor.update")

Progress = Callable[[int, int], None]  # (bytes handed over, total)


class InstallError(Exception):
    """SWUpdate refused or failed; the message says why, in SWUpdate's words."""


class _Stuck(Exception):
    """The client stopped taking data, or did not exit."""


def install(
    path: Path,
    *,
    dry_run: bool,
    progress: Progress = lambda done, total: None,
    client: str = CLIENT,
    socket_dir: str = SOCKET_DIR,
    stall_timeout: float = STALL_TIMEOUT,
    finish_timeout: float = FINISH_TIMEOUT,
) -> None:
    """Install `path` (or only check it, `dry_run`); InstallError if SWUpdate says no.

    SWUpdate streams: it takes the file at the pace it checks and writes it,
    so a client that takes no byte for `stall_timeout` seconds, or has not
    finished `finish_timeout` seconds after the last one, is stuck; it is
    killed and run again, up to ATTEMPTS times.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _install_once(
                path, dry_run, progress, client, socket_dir, stall_timeout, finish_timeout
            )
            return
        except _Stuck as exc:
            if attempt == ATTEMPTS:
                raise InstallError(str(exc)) from None
            log.warning("%s; running it again", exc)


def _install_once(
    path: Path,
    dry_run: bool,
    progress: Progress,
    client: str,
    socket_dir: str,
    stall_timeout: float,
    finish_timeout: float,
) -> None:
    argv = [client, "-v"] + (["-d"] if dry_run else []) + ["-"]
    env = dict(os.environ, TMPDIR=socket_dir, RUNTIME_DIRECTORY=socket_dir)
    try:
        src = path.open("rb")
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror or exc}") from None
    with src:
        total = os.fstat(src.fileno()).st_size
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
        assert proc.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=_collect, args=(proc.stdout, lines), daemon=True)
        reader.start()
        feed = _Feed(proc, src)
        feed.start()
        try:
            rc = _watch(proc, feed, total, progress, stall_timeout, finish_timeout)
        except _Stuck as exc:
            proc.kill()
            proc.wait()
            reader.join(10)
            where = _where(feed.fed, total)
            message = f"SWUpdate {exc} ({where}), killed: {_said(lines)}"
            raise _Stuck(message[:MAX_REASON]) from None
    reader.join(10)
    if feed.error is not None:
        raise InstallError(f"cannot read {path}: {feed.error.strerror or feed.error}")
    if rc != 0 or not any("successful" in line for line in lines):
        where = _where(feed.fed, total)
        message = f"SWUpdate refused the file ({where}, exit {rc}): {_said(lines)}"
        raise InstallError(message[:MAX_REASON])


class _Feed(threading.Thread):
    """Copies the file into the client's stdin; `fed` counts the bytes it took."""

    def __init__(self, proc: subprocess.Popen[bytes], src: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.src = src
        self.fed = 0
        self.error: OSError | None = None

    def run(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while chunk := self.src.read(CHUNK):
                stdin.write(chunk)
                self.fed += len(chunk)
        except BrokenPipeError:
            pass  # SWUpdate stopped reading (it refused the file): its exit status says why
        except OSError as exc:
            if self.proc.poll() is None:  # not the pipe of a killed client: the file
                self.error = exc
                self.proc.kill()
        finally:
            with contextlib.suppress(OSError):
                stdin.close()


def _watch(
    proc: subprocess.Popen[bytes],
    feed: _Feed,
    total: int,
    progress: Progress,
    stall_timeout: float,
    finish_timeout: float,
) -> int:
    """The client's exit status, reporting progress; _Stuck if it is stuck."""
    seen = -1
    last = time.monotonic()
    while True:
        try:
            rc = proc.wait(POLL)
        except subprocess.TimeoutExpired:
            pass
        else:
            feed.join(10)  # it ends once the client's stdin is gone
            if feed.fed != seen:
                progress(feed.fed, total)
            return rc
        now = time.monotonic()
        fed = feed.fed
        if fed != seen:
            seen, last = fed, now
            progress(fed, total)
        elif feed.is_alive() and now - last > stall_timeout:
            raise _Stuck(f"took no data for {stall_timeout:.0f} s")
        elif not feed.is_alive() and now - last > finish_timeout:
            raise _Stuck(f"did not finish within {finish_timeout:.0f} s")


def _collect(stream: IO[bytes], lines: list[str]) -> None:
    for raw in stream:
        text = raw.decode(errors="replace").strip()
        if text:
            lines.append(text)
            del lines[:-200]


def _where(fed: int, total: int) -> str:
    return f"after {fed} of {total} bytes" if fed < total else "after the whole file"


def _said(lines: list[str]) -> str:
    """SWUpdate's own error lines if it gave any, else the last lines it printed."""
    errors = [line for line in lines if "ERROR" in line.upper()]
    shown = (errors or lines)[-TAIL_LINES:]
    text = " | ".join(line.removeprefix("Status: ").strip() for line in shown)
    return text or "no output"
