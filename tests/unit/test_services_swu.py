"""The .swu format (artifact/swu.py): version and hardware for the management
service, and the whole archive and its named files for the artifact tool."""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from twelvefactor_services.artifact.swu import (
    SwuError,
    SwuFile,
    newc_archive,
    newc_header,
    parse_description,
    read_archive,
    read_description,
    settings,
    write_archive,
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


def test_the_files_sw_description_names() -> None:
    info = parse_description(rendered())
    image = SwuFile(
        "rootfs.ext4.zlib", "images", "$swupdate_get_sha256(rootfs.ext4.zlib)", "zstd", "raw"
    )
    assert info.files == (image, image)  # copy1 and copy2
    text = """
    software = { version = "1"; hardware-compatibility = [ "1" ];
        images: ( { filename = "a"; compressed = true; sha256 = "x"; }, { volume = "v"; } );
        files: ( { filename = "b"; path = "/b"; compressed = false; } );
        scripts: ( { filename = "c.lua"; type = "lua"; compressed = "zlib"; } );
        bootenv: ( { name = "filename"; value = "not a file"; } );
    };
    """
    assert parse_description(text).files == (
        SwuFile("a", "images", "x", "zlib"),  # the older boolean: true is zlib
        SwuFile("b", "files", None, None),
        SwuFile("c.lua", "scripts", None, "zlib", "lua"),
    )
    delta = """software = { version = "1"; b = { hardware-compatibility = [ "1" ];
        images: ( { filename = "h"; type = "delta"; sha256 = "y";
            properties: { url = "https://hub:8443/artifacts/z.zck"; chain = "raw"; }; } ); }; };"""
    url = "https://hub:8443/artifacts/z.zck"  # an entry's handler properties: its url
    assert parse_description(delta).files == (SwuFile("h", "images", "y", None, "delta", url),)


def test_settings_with_their_spans() -> None:
    text = 'a = { b = "x" "y"; c: [ 1, 2 ]; d = ( { e = true; } ) };'
    found = {(s.path, s.name): text[s.start : s.end] for s in settings(text)}
    assert found == {
        (("a",), "b"): 'b = "x" "y";',
        (("a",), "c"): "c: [ 1, 2 ];",
        (("a", "d", ""), "e"): "e = true;",
        (("a",), "d"): "d = ( { e = true; } )",
        ((), "a"): text,
    }
    with pytest.raises(SwuError, match="ends inside a setting"):
        settings("a = { b = 1;")
    with pytest.raises(SwuError, match="expected a setting"):
        settings("a = { 1 };")


def _members(tmp_path: Path) -> list[tuple[str, Path]]:
    files = [("sw-description", rendered().encode()), ("sw-description.sig", b"\x30" * 7)]
    files.append(("rootfs.ext4.zlib", bytes(range(256)) * 4099))
    out = []
    for name, data in files:
        (tmp_path / name).write_bytes(data)
        out.append((name, tmp_path / name))
    return out


def test_write_and_read_the_whole_archive(tmp_path: Path) -> None:
    members = _members(tmp_path)
    buf = io.BytesIO()
    write_archive(buf, members)
    archive = read_archive(io.BytesIO(buf.getvalue() + b"\0" * 300))  # cpio's block padding
    assert archive.crc
    assert [(m.name, m.size) for m in archive.members] == [
        (n, p.stat().st_size) for n, p in members
    ]
    for m, (_, path) in zip(archive.members, members, strict=True):
        assert m.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert archive.members[0].data == members[0][1].read_bytes()
    assert archive.members[1].data == b"\x30" * 7
    assert archive.members[2].data is None  # an image is streamed, not kept
    plain = read_archive(io.BytesIO(newc_archive([("sw-description", b"x")])))
    assert not plain.crc and plain.members[0].data == b"x"


def _crc_archive(tmp_path: Path) -> bytes:
    buf = io.BytesIO()
    write_archive(buf, _members(tmp_path))
    return buf.getvalue()


def _dir_member() -> bytes:
    header = bytearray(newc_header("etc", 0, ino=2))
    header[14:22] = b"000041ED"  # mode 040755: a directory
    return bytes(header)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda a: a[:-120], "archive ends after 'rootfs.ext4.zlib' without its TRAILER!!!"),
        (lambda a: a + b"\0\0x", "data after the archive's TRAILER!!! member"),
        (lambda a: a[:-2000] + bytes([a[-2000] ^ 1]) + a[-1999:], "cpio checksum"),
        (lambda a: a[:5000], "archive truncated inside 'rootfs.ext4.zlib'"),
        (
            lambda a: newc_archive([("sw-description", b"x"), ("a", b"1"), ("a", b"2")]),
            "member 'a' is in the archive twice",
        ),
        (
            lambda a: newc_archive([("sw-description", b"x")])[:-124] + _dir_member(),
            "member 'etc' is not a regular file (mode 40755)",
        ),
        (lambda a: newc_archive([("image", b"x")]), "first member is 'image'"),
        (lambda a: b"070701" + a[6:], ""),  # mixing the formats is allowed
        (lambda a: newc_archive([]), "the archive holds no member"),
    ],
)
def test_read_archive_refuses(tmp_path: Path, make: Callable[[bytes], bytes], message: str) -> None:
    data = make(_crc_archive(tmp_path))
    if not message:
        assert not read_archive(io.BytesIO(data)).crc
        return
    with pytest.raises(SwuError, match=re.escape(message)):
        read_archive(io.BytesIO(data))
