"""Commands and child processes: run a command, stop a process, children with a log file.

Shared by the hub, the broker, the services and (through testbed.proc) the
test bed, so that running a tool, starting, waiting until ready, stopping and
crashing a process work the same way everywhere: one `run`, one `stop`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class LaunchError(RuntimeError):
    """A child process did not start or did not become ready."""


class CommandError(RuntimeError):
    """A command exited with an error; the message names it and carries its standard error."""


def run(
    *argv: str, input_text: str | None = None, check: bool = True, timeout: float | None = None
) -> str:
    """The command's standard output; CommandError with its standard error if it fails.

    ``timeout`` (seconds) raises subprocess.TimeoutExpired: a hung tool is an error too.
    """
    done = subprocess.run(
        argv, input=input_text, capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and done.returncode != 0:
        raise CommandError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM, and SIGKILL if it is still there ``timeout`` seconds later."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_log(path: Path) -> str:
    """A process's log as written so far; "" before the process has made it."""
    return path.read_text(errors="replace") if path.exists() else ""


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log, for a failure message."""
    return "\n".join(read_log(path).splitlines()[-lines:])


class ChildProcess:
    """A child process in its own session with its output in a log file.

    ``stop()`` is SIGTERM and a wait (then SIGKILL); ``kill()`` is a crash,
    for tests of what survives one.
    """

    def __init__(self, name: str, log_file: Path) -> None:
        self.name = name
        self.log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def exit_status(self) -> int | None:
        """The return code once it exited by itself (negative: the signal), else None."""
        return None if self._proc is None else self._proc.poll()

    def _spawn(self, argv: Sequence[str], ready: Callable[[], bool], timeout: float) -> None:
        """Start ``argv`` and wait until ``ready()``; LaunchError if it exits or times out."""
        if self.running:
            raise LaunchError(f"{self.name} already running")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while not ready():
            if self._proc.poll() is not None:
                raise LaunchError(
                    f"{self.name} exited with status {self._proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise LaunchError(
                    f"{self.name} not ready within {timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        stop(proc, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, for tests of what survives one."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_file, lines)
