"""HTTP byte ranges (RFC 9110 14.1-14.6) for the artifact server (pure).

A device resuming a download asks for one range (`bytes=N-`); SWUpdate's delta
handler asks for many at once (`bytes=a-b,c-d,...`, up to its `max-ranges`,
150 by default) and reads a `multipart/byteranges` answer. Only what those
clients need is accepted: ranges in ascending order that do not overlap (what
the delta handler sends), so that one request can never make the server send
the same bytes many times over (RFC 9110 14.2 names that abuse), and at most
MAX_RANGES of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_RANGES = 200
_SPEC = re.compile(r"(\d*)-(\d*)")


class RangeError(ValueError):
    """A Range header this server does not serve (400), with the reason."""


@dataclass(frozen=True)
class ByteRange:
    first: int
    last: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.first}-{self.last}/{size}"


def parse(header: str, size: int) -> list[ByteRange]:
    """The satisfiable ranges of `header` for a file of `size` bytes, in order; an empty
    list when none is satisfiable (416). RangeError when the header is malformed, has more
    than MAX_RANGES ranges, or ranges out of order or overlapping."""
    unit, _, specs = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or not specs.strip():
        raise RangeError(f"not a byte range: {header[:80]!r}")
    parts = [p.strip() for p in specs.split(",")]
    if len(parts) > MAX_RANGES:
        raise RangeError(f"{len(parts)} ranges in one request: at most {MAX_RANGES}")
    out: list[ByteRange] = []
    for part in parts:
        m = _SPEC.fullmatch(part)
        if m is None or not (m.group(1) or m.group(2)):
            raise RangeError(f"not a byte range: {part[:80]!r}")
        if not m.group(1):  # a suffix: the last N bytes
            count = int(m.group(2))
            if count == 0:
                continue  # unsatisfiable
            first, last = max(size - count, 0), size - 1
        else:
            first = int(m.group(1))
            last = int(m.group(2)) if m.group(2) else max(first, size - 1)
            if last < first:
                raise RangeError(f"range {part!r} ends before it starts")
            if first >= size:
                continue  # unsatisfiable
            last = min(last, size - 1)
        if out and first <= out[-1].last:
            raise RangeError("ranges must be in ascending order and must not overlap")
        out.append(ByteRange(first, last))
    return out


@dataclass(frozen=True)
class Multipart:
    """A `multipart/byteranges` body: its framing around each range's bytes."""

    boundary: str
    ranges: tuple[ByteRange, ...]
    size: int

    @property
    def content_type(self) -> str:
        return f"multipart/byteranges; boundary={self.boundary}"

    def _head(self, index: int, r: ByteRange) -> bytes:
        lead = "\r\n" if index else ""
        return (
            f"{lead}--{self.boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: {r.content_range(self.size)}\r\n\r\n"
        ).encode()

    @property
    def _tail(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def content_length(self) -> int:
        return sum(len(self._head(i, r)) + r.length for i, r in enumerate(self.ranges)) + len(
            self._tail
        )

    def pieces(self) -> Iterator[bytes | ByteRange]:
        """The body in order: framing as bytes, and each range where its file bytes go."""
        for i, r in enumerate(self.ranges):
            yield self._head(i, r)
            yield r
        yield self._tail
