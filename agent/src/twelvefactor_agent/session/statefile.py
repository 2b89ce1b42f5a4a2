"""The connection-state file the boot-health check reads (agent.state_file).

{"v":1,"ts":T,"management":"online|offline","solution":"online|offline",
 "since":{"management":T,"solution":T}}, replaced atomically on every change
so a reader never sees half a file.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from twelvefactor_agent.util.atomicfile import write_atomic

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
        write_atomic(self.path, json.dumps(self.document()).encode() + b"\n", 0o640)
