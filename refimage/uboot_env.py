"""One copy of U-Boot's redundant environment as it lies on the ESP.

With a redundant environment (CONFIG_SYS_REDUNDAND_ENVIRONMENT) each copy is a
CRC-32 of what follows it, a flag byte (U-Boot writes the older copy and gives
it the newer copy's flag plus one, mod 256), then NUL-ended name=value entries
up to an empty one. Kept apart from uboot.py, whose whole text keys the cached
U-Boot build.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvCopy:
    whole: bool  # its CRC matches
    serial: int  # the flag byte: the newer copy has the higher one (mod 256)
    variables: dict[str, str]


def read_copy(raw: bytes) -> EnvCopy:
    crc = int.from_bytes(raw[:4], "little")
    variables: dict[str, str] = {}
    for entry in raw[5:].split(b"\0"):
        if not entry:
            break
        name, _, value = entry.decode(errors="replace").partition("=")
        variables[name] = value
    return EnvCopy(zlib.crc32(raw[5:]) == crc, raw[4], variables)
