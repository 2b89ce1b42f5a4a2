"""Read what the management service needs from a `.swu` file: version and hardware.

A `.swu` is a cpio archive in the "newc" format whose first member is
`sw-description`, a libconfig document. We read only that member and take from
it `software.version` and the `hardware-compatibility` lists (top level, or in
a board's block: `software.<board>.hardware-compatibility`). The signature is
SWUpdate's to check on the device; nothing here trusts the file beyond
describing it to the operator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

NEWC_MAGIC = (b"070701", b"070702")  # 070702 is newc with checksums ("crc")
HEADER_LEN = 110
MAX_DESCRIPTION = 1 << 20  # a sw-description is a few KiB; refuse anything absurd


class SwuError(ValueError):
    """The file is not a `.swu` we can describe."""


@dataclass(frozen=True)
class SwuInfo:
    version: str
    # board name ("" for a list outside any board block) -> accepted hardware revisions
    hardware: dict[str, tuple[str, ...]]


_HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")


def _hex8(field: bytes, what: str) -> int:
    """A newc header number: exactly 8 hex digits (int() would also take "-0000001",
    and a read of -1 bytes is the whole file)."""
    if not _HEX8.fullmatch(field):
        raise SwuError(f"corrupt cpio header: {what} {field!r} is not 8 hex digits")
    return int(field, 16)


def read_description(f: BinaryIO) -> str:
    """The text of the first cpio member, which must be named `sw-description`."""
    header = f.read(HEADER_LEN)
    if len(header) < HEADER_LEN or header[:6] not in NEWC_MAGIC:
        raise SwuError("not a cpio newc archive (a .swu starts with 070701 or 070702)")
    size = _hex8(header[54:62], "file size")
    namesize = _hex8(header[94:102], "name size")
    if not 1 <= namesize <= 4096:
        raise SwuError("corrupt cpio header: name size")
    name = f.read(namesize)
    member = name.rstrip(b"\0").decode("utf-8", "replace")
    if member != "sw-description":
        raise SwuError(f"first member is {member!r}, expected 'sw-description'")
    f.read((4 - (HEADER_LEN + namesize) % 4) % 4)  # header + name are padded to 4 bytes
    if size > MAX_DESCRIPTION:
        raise SwuError(f"sw-description is {size} bytes, more than {MAX_DESCRIPTION}")
    data = f.read(size)
    if len(data) != size:
        raise SwuError("archive truncated inside sw-description")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SwuError("sw-description is not UTF-8") from None


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>/\*.*?\*/|//[^\n]*|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<name>[A-Za-z*][-A-Za-z0-9_*]*)
  | (?P<number>[-+]?[0-9][0-9A-Fa-fxX.eEL+-]*)
  | (?P<punct>[=:;,{}()\[\]])
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            line = text.count("\n", 0, pos) + 1
            raise SwuError(f"sw-description line {line}: unexpected {text[pos : pos + 10]!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        if kind not in ("ws", "comment"):
            out.append((kind, m.group()))
    return out


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def parse_description(text: str) -> SwuInfo:
    """Version and hardware compatibility from a sw-description (libconfig) text."""
    toks = _tokens(text)
    path: list[str] = []  # names of the groups/lists we are inside ("" for an unnamed one)
    strings: dict[tuple[str, ...], str] = {}
    lists: dict[tuple[str, ...], list[str]] = {}
    pending: str | None = None  # a setting name waiting for its value
    i = 0
    while i < len(toks):
        kind, val = toks[i]
        if kind == "name" and i + 1 < len(toks) and toks[i + 1][1] in ("=", ":"):
            pending = val
            i += 2
            continue
        if val in ("{", "(", "["):
            path.append(pending or "")
            if val == "[" and pending is not None:
                lists[tuple(path)] = []
            pending = None
        elif val in ("}", ")", "]"):
            if not path:
                raise SwuError("sw-description: unbalanced brackets")
            path.pop()
        elif kind == "string":
            # adjacent strings concatenate in libconfig
            s = _unquote(val)
            while i + 1 < len(toks) and toks[i + 1][0] == "string":
                i += 1
                s += _unquote(toks[i][1])
            key = tuple(path)
            if pending is not None:
                strings[(*key, pending)] = s
            elif key in lists:
                lists[key].append(s)
            pending = None
        elif kind in ("number", "name"):
            pending = None  # a number or boolean value we do not need
        i += 1
    if path:
        raise SwuError("sw-description: unbalanced brackets")
    version = strings.get(("software", "version"))
    if not version:
        raise SwuError("sw-description has no software.version string")
    hardware: dict[str, tuple[str, ...]] = {}
    for key, revs in lists.items():
        if key[-1] != "hardware-compatibility" or key[0] != "software":
            continue
        if len(key) == 2:
            hardware[""] = tuple(revs)
        elif len(key) == 3:
            hardware[key[1]] = tuple(revs)
    if not hardware:
        raise SwuError("sw-description has no hardware-compatibility list")
    return SwuInfo(version, hardware)


def describe(path: Path) -> SwuInfo:
    with path.open("rb") as f:
        return parse_description(read_description(f))


def newc_member(name: str, data: bytes, ino: int = 1) -> bytes:
    """One cpio newc member (used to build `.swu` files for tests and tools)."""
    nameb = name.encode() + b"\0"
    fields = [ino, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nameb), 0]
    header = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
    out = header + nameb
    out += b"\0" * ((4 - len(out) % 4) % 4)
    out += data + b"\0" * ((4 - len(data) % 4) % 4)
    return out


def newc_archive(members: list[tuple[str, bytes]]) -> bytes:
    body = b"".join(newc_member(n, d, i + 1) for i, (n, d) in enumerate(members))
    return body + newc_member("TRAILER!!!", b"", 0)
