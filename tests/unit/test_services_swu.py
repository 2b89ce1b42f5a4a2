"""Reading version and hardware from a .swu (management/swu.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from twelvefactor_services.management.swu import (
    SwuError,
    newc_archive,
    parse_description,
    read_description,
)

TEMPLATE = (
    Path(__file__).resolve().parents[2]
    / "meta-twelvefactor/recipes-support/twelvefactor-update/files/sw-description"
)


def rendered(version: str = "1.2.3", machine: str = "qemux86-64", rev: str = "1.0") -> str:
    return (
        TEMPLATE.read_text()
        .replace("@@TWELVEFACTOR_UPDATE_VERSION@@", version)
        .replace("@@MACHINE@@", machine)
        .replace("@@TWELVEFACTOR_HW_REVISION@@", rev)
        .replace("@@TWELVEFACTOR_ROOTFS_IMAGE@@", "rootfs.ext4.zlib")
    )


def test_the_layers_template() -> None:
    info = parse_description(rendered())
    assert info.version == "1.2.3"
    assert info.hardware == {"qemux86-64": ("1.0",)}


def test_archive_round_trip() -> None:
    text = rendered("2.0")
    swu = newc_archive([("sw-description", text.encode()), ("rootfs.ext4.zlib", b"x" * 1001)])
    assert read_description(io.BytesIO(swu)) == text


def test_top_level_list_comments_and_concatenation() -> None:
    text = """
    # comment
    software = {
        version = "3." "1"; // adjacent strings join
        /* hardware-compatibility = [ "no" ]; */
        hardware-compatibility = [ "1.0", "#RE:^2\\\\..*$" ];
        images: ( { filename = "x"; installed-directly = true; offset = 0x10; } );
    };
    """
    info = parse_description(text)
    assert info.version == "3.1"
    assert info.hardware == {"": ("1.0", "#RE:^2\\..*$")}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('software = { hardware-compatibility = ["1"]; };', "no software.version"),
        ('software = { version = "1"; };', "no hardware-compatibility"),
        ('software = { version = "1"; ', "unbalanced"),
        ('software = { version = "1"; } }', "unbalanced"),
        ('software = { version = "1" @ };', "unexpected"),
    ],
)
def test_description_errors(text: str, message: str) -> None:
    with pytest.raises(SwuError, match=message):
        parse_description(text)


def _with_size(field: bytes) -> bytes:
    """A good archive whose sw-description's file size field (bytes 54..62) is `field`."""
    data = newc_archive([("sw-description", rendered().encode())])
    return data[:54] + field + data[62:] + b"\0" * 4096


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PK\x03\x04" + b"\0" * 200, "not a cpio newc archive"),
        (newc_archive([("other", b"x"), ("sw-description", b"")]), "first member is 'other'"),
        (newc_archive([("sw-description", b"abc")])[:129], "truncated"),
        (newc_archive([("sw-description", b"\xff\xfe")]), "not UTF-8"),
        # Issue 19, finding 14: int() takes a sign; a size of -1 read the whole file.
        (_with_size(b"-0000001"), r"file size b'-0000001' is not 8 hex digits"),
        (_with_size(b"+00000ff"), "is not 8 hex digits"),
        (_with_size(b" 00000ff"), "is not 8 hex digits"),
    ],
)
def test_archive_errors(data: bytes, message: str) -> None:
    with pytest.raises(SwuError, match=message):
        read_description(io.BytesIO(data))
