"""Child processes (the broker, the services, host agents): own session, output to a log file.

Shared by the broker, the services and the host agents so that starting,
waiting until ready, stopping and crashing them work the same way.
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
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, for tests of what survives one."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
