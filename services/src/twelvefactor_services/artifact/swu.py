"""The `.swu` format: its cpio archive (read and written) and what sw-description says.

A `.swu` is a cpio archive in the "newc" format whose first member is
`sw-description`, a libconfig document. The management service reads only
that member (`describe`) and takes from it `software.version` and the
`hardware-compatibility` lists (top level, or in a board's block:
`software.<board>.hardware-compatibility`). The signature is SWUpdate's to
check on the device; nothing here trusts the file beyond describing it to the
operator.

The artifact tool (`twelvefactor_services.artifact`) reads the whole archive
(`read_archive`: every member's size and sha256, the "crc" format's checksums
checked as SWUpdate checks them), the files sw-description names with their
digests and compression, and writes archives (`write_archive`), so there is
one reader and one writer of the format here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

NEWC = b"070701"
NEWC_CRC = b"070702"  # newc with checksums ("crc"): the byte sum of each member's data
NEWC_MAGIC = (NEWC, NEWC_CRC)
HEADER_LEN = 110
MAX_DESCRIPTION = 1 << 20  # a sw-description is a few KiB; refuse anything absurd
DESCRIPTION = "sw-description"
SIGNATURE = "sw-description.sig"  # SWUpdate's name for the signature, right after it
TRAILER = "TRAILER!!!"
MAX_MEMBER = 0xFFFFFFFF  # newc sizes are 8 hex digits
S_IFMT, S_IFREG = 0o170000, 0o100000
# sw-description's lists whose entries name a file of the archive
FILE_SECTIONS = ("images", "files", "scripts")
CHUNK = 4 * 1024 * 1024


class SwuError(ValueError):
    """The file is not a `.swu` we can describe."""


@dataclass(frozen=True)
class SwuFile:
    """An entry of sw-description's images, files or scripts that names an archive member."""

    filename: str
    section: str  # images | files | scripts
    sha256: str | None
    compressed: str | None  # "zstd", "zlib" (also `compressed = true`), ...; None: not compressed
    type: str | None = None  # the handler: "raw", "delta", ...
    url: str | None = None  # properties.url (the delta handler's chunks)
    source_size: str | None = None  # properties.source-size (what the handler indexes)


@dataclass(frozen=True)
class SwuInfo:
    version: str
    # board name ("" for a list outside any board block) -> accepted hardware revisions
    hardware: dict[str, tuple[str, ...]]
    # every entry naming a file, in document order (an A/B description names its
    # image once per selection)
    files: tuple[SwuFile, ...] = ()


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


class Token(NamedTuple):
    kind: str  # string | name | number | punct
    text: str
    start: int  # offsets in the document (the artifact tool edits by them)
    end: int


def tokens(text: str) -> list[Token]:
    """The libconfig tokens of `text`, without white space and comments."""
    out: list[Token] = []
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
            out.append(Token(kind, m.group(), m.start(), m.end()))
    return out


class Setting(NamedTuple):
    path: tuple[str, ...]  # the enclosing settings ("" for an element of a list)
    name: str
    start: int  # from its name ...
    end: int  # ... to the end of its value and its ";" or "," if any


def settings(text: str) -> list[Setting]:
    """Every setting of a libconfig document with where it is in the text (the
    artifact tool repeats a board's block and removes `compressed` by these spans)."""
    toks = tokens(text)
    out: list[Setting] = []

    def at(i: int) -> Token:
        if i >= len(toks):
            raise SwuError("sw-description ends inside a setting")
        return toks[i]

    def value(i: int, path: tuple[str, ...]) -> int:
        """Index after the value starting at toks[i]."""
        tok = at(i)
        if tok.text == "{":
            i += 1
            while at(i).text != "}":
                i = setting(i, path)
            return i + 1
        if tok.text in ("(", "["):
            close = ")" if tok.text == "(" else "]"
            i += 1
            while at(i).text != close:
                i = value(i, (*path, ""))
                if at(i).text == ",":
                    i += 1
            return i + 1
        if tok.kind == "string":
            while i + 1 < len(toks) and toks[i + 1].kind == "string":
                i += 1  # adjacent strings are one value
            return i + 1
        if tok.kind in ("number", "name"):
            return i + 1
        raise SwuError(f"sw-description: unexpected {tok.text!r} where a value belongs")

    def setting(i: int, path: tuple[str, ...]) -> int:
        name = at(i)
        if name.kind != "name" or at(i + 1).text not in ("=", ":"):
            raise SwuError(f"sw-description: expected a setting, found {name.text!r}")
        i = value(i + 2, (*path, name.text))
        if i < len(toks) and toks[i].text in (";", ","):
            i += 1
        out.append(Setting(path, name.text, name.start, toks[i - 1].end))
        return i

    i = 0
    while i < len(toks):
        i = setting(i, ())
    return out


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def parse_description(text: str) -> SwuInfo:
    """Version, hardware compatibility and named files from a sw-description (libconfig) text."""
    toks = [(t.kind, t.text) for t in tokens(text)]
    path: list[str] = []  # names of the groups/lists we are inside ("" for an unnamed one)
    # parallel to path: the settings of a file entry (a group in images/files/scripts)
    entries: list[dict[str, str] | None] = []
    found: list[tuple[str, dict[str, str]]] = []
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
            in_section = val == "{" and pending is None and path and path[-1] in FILE_SECTIONS
            entries.append({} if in_section else None)
            path.append(pending or "")
            if val == "[" and pending is not None:
                lists[tuple(path)] = []
            pending = None
        elif val in ("}", ")", "]"):
            if not path:
                raise SwuError("sw-description: unbalanced brackets")
            path.pop()
            entry = entries.pop()
            if entry is not None:
                found.append((path[-1], entry))
        elif kind == "string":
            # adjacent strings concatenate in libconfig
            s = _unquote(val)
            while i + 1 < len(toks) and toks[i + 1][0] == "string":
                i += 1
                s += _unquote(toks[i][1])
            key = tuple(path)
            if pending is not None:
                strings[(*key, pending)] = s
                if entries and entries[-1] is not None:
                    entries[-1][pending] = s
                elif len(entries) > 1 and entries[-2] is not None and path[-1] == "properties":
                    entries[-2][f"properties.{pending}"] = s  # an entry's handler properties
            elif key in lists:
                lists[key].append(s)
            pending = None
        elif kind in ("number", "name"):
            if pending is not None and kind == "name" and entries and entries[-1] is not None:
                entries[-1][pending] = val.lower()  # a boolean: `compressed = true;`
            pending = None  # otherwise a number or boolean value we do not need
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
    files = tuple(
        SwuFile(
            e["filename"],
            section,
            e.get("sha256"),
            _compression(e.get("compressed")),
            e.get("type"),
            e.get("properties.url"),
            e.get("properties.source-size"),
        )
        for section, e in found
        if "filename" in e
    )
    return SwuInfo(version, hardware, files)


def _compression(value: str | None) -> str | None:
    """SWUpdate's `compressed`: a method name, or the older boolean (true = zlib)."""
    if value in (None, "false"):
        return None
    return "zlib" if value == "true" else value


def describe(path: Path) -> SwuInfo:
    with path.open("rb") as f:
        return parse_description(read_description(f))


def _pad(n: int) -> int:
    """Bytes that pad `n` to newc's 4-byte alignment."""
    return (4 - n % 4) % 4


@dataclass(frozen=True)
class Member:
    """One file of a `.swu` archive."""

    name: str
    size: int
    sha256: str
    data: bytes | None  # kept for sw-description and its signature, not for images


@dataclass(frozen=True)
class Archive:
    members: tuple[Member, ...]  # in archive order, sw-description first
    crc: bool  # every header is 070702 and every checksum was checked

    def get(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise SwuError(f"archive truncated in {what}")
    return data


def read_archive(f: BinaryIO) -> Archive:
    """Every member of a `.swu`: name, size and sha256 (read in chunks), checked as
    SWUpdate's reader checks the archive.

    Refused, with the member named: a header that is not newc, a number that is
    not 8 hex digits, a name without its NUL, a member that is not a regular
    file, a name twice, a "crc" checksum that does not match the data, a first
    member other than sw-description, no trailer, anything but zeros after it.
    """
    members: list[Member] = []
    magics: set[bytes] = set()
    while True:
        where = f"after {members[-1].name!r}" if members else "at the start"
        header = f.read(HEADER_LEN)
        if not members and (len(header) < HEADER_LEN or header[:6] not in NEWC_MAGIC):
            raise SwuError("not a cpio newc archive (a .swu starts with 070701 or 070702)")
        if len(header) < HEADER_LEN:
            raise SwuError(f"archive ends {where} without its {TRAILER} member")
        magic = header[:6]
        if magic not in NEWC_MAGIC:
            raise SwuError(f"corrupt cpio header {where}: magic {magic!r}")
        mode = _hex8(header[14:22], "mode")
        size = _hex8(header[54:62], "file size")
        namesize = _hex8(header[94:102], "name size")
        check = _hex8(header[102:110], "checksum")
        if not 1 <= namesize <= 4096:
            raise SwuError(f"corrupt cpio header {where}: name size {namesize}")
        raw = _read_exact(f, namesize, f"the header {where}")
        if raw[-1:] != b"\0" or b"\0" in raw[:-1]:
            raise SwuError(f"corrupt cpio header {where}: the name is not NUL-terminated")
        name = raw[:-1].decode("utf-8", "replace")
        _read_exact(f, _pad(HEADER_LEN + namesize), f"the header of {name!r}")
        if name == TRAILER:
            break
        if not members and name != DESCRIPTION:
            raise SwuError(f"first member is {name!r}, expected {DESCRIPTION!r}")
        if mode & S_IFMT != S_IFREG:
            raise SwuError(f"member {name!r} is not a regular file (mode {mode:o})")
        if any(m.name == name for m in members):
            raise SwuError(f"member {name!r} is in the archive twice")
        if name == DESCRIPTION and size > MAX_DESCRIPTION:
            raise SwuError(f"sw-description is {size} bytes, more than {MAX_DESCRIPTION}")
        keep = name in (DESCRIPTION, SIGNATURE) and size <= MAX_DESCRIPTION
        h = hashlib.sha256()
        total = 0
        kept: list[bytes] = []
        left = size
        while left:
            chunk = f.read(min(left, CHUNK))
            if not chunk:
                raise SwuError(f"archive truncated inside {name!r}")
            h.update(chunk)
            if magic == NEWC_CRC:
                total += sum(chunk)
            if keep:
                kept.append(chunk)
            left -= len(chunk)
        if magic == NEWC_CRC and total & 0xFFFFFFFF != check:
            raise SwuError(
                f"member {name!r}: cpio checksum {check:08x} in its header, "
                f"its data sums to {total & 0xFFFFFFFF:08x}"
            )
        _read_exact(f, _pad(size), f"the padding of {name!r}")
        magics.add(magic)
        members.append(Member(name, size, h.hexdigest(), b"".join(kept) if keep else None))
    if not members:
        raise SwuError("the archive holds no member")
    while chunk := f.read(CHUNK):  # cpio pads an archive to its block size with zeros
        if chunk.strip(b"\0"):
            raise SwuError(f"data after the archive's {TRAILER} member")
    return Archive(tuple(members), crc=magics == {NEWC_CRC})


def newc_header(name: str, size: int, *, ino: int, check: int = 0, crc: bool = False) -> bytes:
    """A newc header for a regular file, its name and the name's padding.

    Only the name, the size and the checksum matter to SWUpdate; the rest is
    fixed (mode 0644, owner 0, time 0), so an archive depends on its files alone.
    """
    nameb = name.encode() + b"\0"
    fields = [ino, 0o100644, 0, 0, 1, 0, size, 0, 0, 0, 0, len(nameb), check]
    out = (NEWC_CRC if crc else NEWC) + b"".join(f"{v:08X}".encode() for v in fields) + nameb
    return out + b"\0" * _pad(len(out))


def write_archive(out: BinaryIO, members: Sequence[tuple[str, Path]]) -> None:
    """A newc "crc" archive of `members` (name in the archive, file), in that order.

    The checksum is summed while a file is copied and then written into its
    header, so each file is read once; `out` must therefore be seekable.
    """
    for ino, (name, path) in enumerate(members, 1):
        size = path.stat().st_size
        if size > MAX_MEMBER:
            raise SwuError(f"{path} is {size} bytes; a newc member holds at most 4 GiB - 1")
        start = out.tell()
        out.write(newc_header(name, size, ino=ino, crc=True))
        total = copied = 0
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                total += sum(chunk)
                copied += len(chunk)
                out.write(chunk)
        if copied != size:
            raise SwuError(f"{path} changed size while it was archived")
        out.write(b"\0" * _pad(size))
        end = out.tell()
        out.seek(start + HEADER_LEN - 8)  # the checksum is the header's last field
        out.write(f"{total & 0xFFFFFFFF:08X}".encode())
        out.seek(end)
    out.write(newc_header(TRAILER, 0, ino=0, crc=True))


def newc_member(name: str, data: bytes, ino: int = 1) -> bytes:
    """One cpio newc member (used to build `.swu` files for tests and tools)."""
    return newc_header(name, len(data), ino=ino) + data + b"\0" * _pad(len(data))


def newc_archive(members: list[tuple[str, bytes]]) -> bytes:
    body = b"".join(newc_member(n, d, i + 1) for i, (n, d) in enumerate(members))
    return body + newc_member(TRAILER, b"", 0)
