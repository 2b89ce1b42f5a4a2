"""The artifact server's byte ranges: what is served, refused, unsatisfiable (byteranges.py)."""

from __future__ import annotations

import email.parser
import email.policy

import pytest
from twelvefactor_services.management.byteranges import (
    MAX_RANGES,
    ByteRange,
    Multipart,
    RangeError,
    parse,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", [ByteRange(0, 9)]),
        ("bytes=90-", [ByteRange(90, 99)]),
        ("bytes=90-500", [ByteRange(90, 99)]),  # clamped to the end
        ("bytes=-10", [ByteRange(90, 99)]),  # the last ten
        ("bytes=-500", [ByteRange(0, 99)]),
        ("bytes=0-1, 5-6,10-", [ByteRange(0, 1), ByteRange(5, 6), ByteRange(10, 99)]),
        ("Bytes = 3-4", [ByteRange(3, 4)]),
        ("bytes=100-", []),  # unsatisfiable: 416
        ("bytes=-0", []),
        ("bytes=0-1,100-200", [ByteRange(0, 1)]),  # the unsatisfiable one dropped
    ],
)
def test_ranges_served(header: str, expected: list[ByteRange]) -> None:
    assert parse(header, 100) == expected


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("items=0-1", "not a byte range"),
        ("bytes=", "not a byte range"),
        ("bytes=-", "not a byte range"),
        ("bytes=a-b", "not a byte range"),
        ("bytes=5-2", "ends before it starts"),
        ("bytes=5-9,0-1", "ascending order"),  # out of order
        ("bytes=0-5,5-9", "must not overlap"),  # the same byte twice
        ("bytes=0-99,-10", "must not overlap"),
    ],
)
def test_ranges_refused(header: str, why: str) -> None:
    with pytest.raises(RangeError, match=why):
        parse(header, 100)


def test_at_most_max_ranges() -> None:
    many = ",".join(f"{2 * i}-{2 * i}" for i in range(MAX_RANGES))
    assert len(parse(f"bytes={many}", 10 * MAX_RANGES)) == MAX_RANGES
    with pytest.raises(RangeError, match=f"at most {MAX_RANGES}"):
        parse(f"bytes={many},{10 * MAX_RANGES - 1}-", 10 * MAX_RANGES)


def test_a_multipart_body_parses_back_to_the_ranges_and_its_length_is_exact() -> None:
    data = bytes(range(256)) * 4
    ranges = parse("bytes=0-9,100-199,-24", len(data))
    body = Multipart("0123abcd", tuple(ranges), len(data))
    raw = b"".join(
        data[p.first : p.last + 1] if isinstance(p, ByteRange) else p for p in body.pieces()
    )
    assert len(raw) == body.content_length
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {body.content_type}\r\n\r\n".encode() + raw
    )
    parts = list(message.iter_parts())
    assert [p["Content-Range"] for p in parts] == [
        "bytes 0-9/1024",
        "bytes 100-199/1024",
        "bytes 1000-1023/1024",
    ]
    assert [p.get_payload(decode=True) for p in parts] == [
        data[0:10],
        data[100:200],
        data[1000:1024],
    ]
