"""What the device says about itself: parsers (pure) and the readers around them.

Everything degrades to null: a reading the system cannot give is reported as
missing, never guessed.
"""

from __future__ import annotations

import os
import platform
import shlex
from pathlib import Path

from twelvefactor_agent.device.bootenv import BootEnvError, running_slot


def parse_cmdline_slot(cmdline: str) -> str | None:
    """The running slot (bootenv.running_slot's rule), or None where there is none."""
    try:
        return running_slot(cmdline)
    except BootEnvError:
        return None


def parse_meminfo(text: str) -> dict[str, int | None]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0])
    return {"total_kb": values.get("MemTotal"), "available_kb": values.get("MemAvailable")}


def parse_os_release(text: str) -> dict[str, str | None]:
    values = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if not sep or key.startswith("#"):
            continue
        try:
            words = shlex.split(raw)
        except ValueError:
            continue
        values[key.strip()] = words[0] if words else ""
    return {
        "id": values.get("ID"),
        "version": values.get("VERSION_ID"),
        "pretty": values.get("PRETTY_NAME"),
    }


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def boot_slot(cmdline: Path = Path("/proc/cmdline")) -> str | None:
    text = _read(cmdline)
    return None if text is None else parse_cmdline_slot(text)


def uptime(path: Path = Path("/proc/uptime")) -> float | None:
    text = _read(path)
    try:
        return float(text.split()[0]) if text else None
    except ValueError:
        return None


def memory(path: Path = Path("/proc/meminfo")) -> dict[str, int | None]:
    return parse_meminfo(_read(path) or "")


def load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def disk(path: Path) -> dict[str, object]:
    try:
        st = os.statvfs(path)
    except OSError:
        return {"path": str(path), "total_bytes": None, "free_bytes": None}
    return {
        "path": str(path),
        "total_bytes": st.f_blocks * st.f_frsize,
        "free_bytes": st.f_bavail * st.f_frsize,
    }


def os_release(
    paths: tuple[Path, ...] = (Path("/etc/os-release"), Path("/usr/lib/os-release")),
) -> dict[str, str | None]:
    for path in paths:
        text = _read(path)
        if text is not None:
            return parse_os_release(text)
    return {"id": None, "version": None, "pretty": None}


def hardware(path: Path = Path("/etc/hwrevision")) -> str | None:
    """SWUpdate's hardware revision file: `<board> <revision>` on its first line."""
    text = _read(path)
    if not text or not text.strip():
        return None
    return text.strip().splitlines()[0]


def kernel() -> str:
    return platform.release()


def machine() -> str:
    return platform.machine()
