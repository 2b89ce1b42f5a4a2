"""Running a command, stopping a process and reading its log: one way for the whole test bed."""

from __future__ import annotations

import subprocess
from pathlib import Path


class TestbedError(RuntimeError):
    """A step of the test bed failed; the message names the command or the wait."""

    __test__ = False  # not a test class, whatever pytest's name patterns say


def run(
    *argv: str, input_text: str | None = None, check: bool = True, timeout: float | None = None
) -> str:
    """The command's standard output; TestbedError with its standard error if it fails.

    ``timeout`` (seconds) raises subprocess.TimeoutExpired: a hung tool fails its test.
    """
    done = subprocess.run(
        argv, input=input_text, capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and done.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def read_log(path: Path) -> str:
    """A process's log as written so far; "" before the process has made it."""
    return path.read_text(errors="replace") if path.exists() else ""


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log, for a failure message."""
    return "\n".join(read_log(path).splitlines()[-lines:])


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """SIGTERM, and SIGKILL if it is still there `timeout` seconds later."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
