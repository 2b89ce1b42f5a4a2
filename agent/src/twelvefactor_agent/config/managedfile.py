"""The managed configuration's state on /data: one JSON file, replaced atomically.

`<data_dir>/managed-config.json` holds the version in force, the version
under trial (if the agent is inside a confirmation window) and the last
report (reconfig.Stored). It is written to a temporary file, fsynced, renamed
over the old one, and the directory fsynced, so after a power cut the file is
either the old state or the new one, never a mix. It lives in the data
directory, the only place the agent writes (the unit's ReadWritePaths); the
provisioned /data/config/agent.toml is never rewritten, so a version that
removes a key brings back the provisioned value.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from twelvefactor_agent.config.reconfig import Stored
from twelvefactor_agent.util.atomicfile import write_atomic

log = logging.getLogger("twelvefactor.config")
NAME = "managed-config.json"


class ManagedFile:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / NAME

    def load(self) -> Stored:
        """The stored state; an empty one if there is none or it is unreadable (logged)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Stored()
        except OSError as exc:
            log.error("cannot read %s: %s; using the provisioned configuration", self.path, exc)
            return Stored()
        try:
            return Stored.from_json(json.loads(raw))
        except (ValueError, RecursionError) as exc:
            log.error("%s is not valid (%s); using the provisioned configuration", self.path, exc)
            return Stored()

    def save(self, stored: Stored) -> None:
        data = json.dumps(stored.as_json(), indent=1, allow_nan=False).encode() + b"\n"
        write_atomic(self.path, data, 0o640)
