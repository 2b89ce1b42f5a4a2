"""zchunk files for delta artifacts, as meta-swupdate's `zck` and `zckheader` image types
make them.

`make_zck` runs `zck -u --chunk-hash-type sha256` (zstd chunks cut where the
content says, SHA-256 chunk digests, and the digests of the uncompressed
chunks that SWUpdate's delta handler compares with the running slot).
`header_length` reads the header's length from the file's lead, as
`zck_read_header -v` prints it for the `zckheader` conversion: the header
(lead, index, signatures) is what travels inside the signed `.swu`; its own
SHA-256 (in the lead) covers every chunk digest, so a chunk fetched later
cannot be altered without the handler noticing.
`data_size` adds up the index's uncompressed chunk lengths: the size of the
file system the chunks rebuild, which the delta's `source-size` uses to bound
what the handler reads of the running slot.
"""

from __future__ import annotations

from pathlib import Path

from twelvefactor_services.artifact import ArtifactToolError
from twelvefactor_services.artifact.cms import run, tool

MAGIC = b"\x00ZCK1"
SHA256_TYPE = 1  # zchunk's hash type for SHA-256 (the header digest)
DIGEST_LEN = 32
# zchunk's chunk hash types (zck.h: SHA-1, SHA-256, SHA-512, SHA-512/128) and their lengths
CHUNK_DIGEST_LEN = {0: 20, 1: 32, 2: 64, 3: 16}
FLAG_STREAMS = 1  # reserved by the format, made by no zck release
FLAG_OPTIONAL_ELEMENTS = 2
FLAG_UNCOMPRESSED_DIGESTS = 4
LEAD_MAX = len(MAGIC) + 2 * 10 + DIGEST_LEN  # two compressed integers of up to 10 bytes


def make_zck(rootfs: Path, out: Path) -> Path:
    """`out`: `rootfs` (an uncompressed ext4 image) as a zchunk file."""
    zck = tool("zck", "zchunk")
    run([zck, "-u", "--chunk-hash-type", "sha256", "-o", out, rootfs], "zck")
    return out


def _integer(lead: bytes, at: int) -> tuple[int, int]:
    """A zchunk compressed integer at `at`: 7 bits a byte, low first, the high bit set on
    the last byte; (value, the offset after it)."""
    value = shift = 0
    while True:
        if at >= len(lead) or shift > 63:
            raise ArtifactToolError("not a zchunk file: its lead is cut short")
        byte = lead[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte & 0x80:
            return value, at


def header_length(lead: bytes) -> int:
    """The length of a zchunk file's header, lead included, from its first bytes."""
    if not lead.startswith(MAGIC):
        raise ArtifactToolError("not a zchunk file (no ZCK1 magic)")
    hash_type, at = _integer(lead, len(MAGIC))
    size, at = _integer(lead, at)
    if hash_type != SHA256_TYPE:
        raise ArtifactToolError(f"zchunk header digest type {hash_type}, not SHA-256")
    return at + DIGEST_LEN + size


def write_header(zck: Path, out: Path) -> Path:
    """`out`: the header of the zchunk file `zck` (what the .swu carries)."""
    with zck.open("rb") as f:
        length = header_length(f.read(LEAD_MAX))
        f.seek(0)
        data = f.read(length)
    if len(data) != length:
        raise ArtifactToolError(f"{zck}: the zchunk header is cut short")
    out.write_bytes(data)
    return out


def data_size(header: bytes) -> int:
    """The uncompressed size of the data a zchunk `header` indexes (its chunks but the
    first, the compression dictionary, which is not part of the data)."""
    length = header_length(header[:LEAD_MAX])
    if len(header) < length:
        raise ArtifactToolError(f"the zchunk header is cut short ({len(header)} of {length} bytes)")
    at = len(MAGIC)
    _, at = _integer(header, at)  # header digest type, checked by header_length
    _, at = _integer(header, at)  # header size
    at += DIGEST_LEN + DIGEST_LEN  # the header's digest, then the data's
    flags, at = _integer(header, at)
    if flags & FLAG_STREAMS:
        raise ArtifactToolError("a zchunk file with data streams: not one zck makes")
    _, at = _integer(header, at)  # compression type
    if flags & FLAG_OPTIONAL_ELEMENTS:
        count, at = _integer(header, at)
        for _ in range(count):
            _, at = _integer(header, at)  # element id
            size, at = _integer(header, at)
            at += size
    _, at = _integer(header, at)  # index size
    hash_type, at = _integer(header, at)
    if hash_type not in CHUNK_DIGEST_LEN:
        raise ArtifactToolError(f"zchunk chunk hash type {hash_type} is not one zchunk defines")
    digest = CHUNK_DIGEST_LEN[hash_type] * (2 if flags & FLAG_UNCOMPRESSED_DIGESTS else 1)
    count, at = _integer(header, at)
    total = 0
    for number in range(count):
        at += digest
        _, at = _integer(header, at)  # compressed length
        size, at = _integer(header, at)
        if at > length:
            raise ArtifactToolError("the zchunk index runs past its header")
        if number:
            total += size
    return total
