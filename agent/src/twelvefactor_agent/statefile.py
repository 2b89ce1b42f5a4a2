"""The connection-state file the boot-health check reads (agent.state_file).

{"v":1,"ts":T,"management":"online|offline","solution":"online|offline",
 "since":{"management":T,"solution":T}}, replaced atomically on every change
so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

SESSIONS = ("management", "solution")


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        now = time.time()
        self.state = dict.fromkeys(SESSIONS, "offline")
        self.since = dict.fromkeys(SESSIONS, now)

    def set(self, session: str, online: bool) -> bool:
        """Record a session going up or down; True if that changed anything."""
        with self._lock:
            value = "online" if online else "offline"
            if self.state[session] == value:
                return False
            self.state[session] = value
            self.since[session] = time.time()
            self._write()
            return True

    def write(self) -> None:
        with self._lock:
            self._write()

    def document(self) -> dict[str, object]:
        return {"v": 1, "ts": time.time(), **self.state, "since": dict(self.since)}

    def _write(self) -> None:
        data = json.dumps(self.document()).encode() + b"\n"
        tmp = self.path.with_name(f".{self.path.name}.new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
