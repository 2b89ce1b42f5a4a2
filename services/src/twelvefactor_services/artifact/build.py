"""Build a signed `.swu` from a root file system image, as the twelvefactor-update recipe does.

The steps, each a function the reference-image builder also calls:
`compress_zstd` (zstd -3 in one thread with its content checksum: oe-core's
`ext4.zst` conversion, and reproducible), `template.description` for the
compressed file, `cms.sign` (CMS, detached, DER, no S/MIME capabilities: what
meta-swupdate's `SWUPDATE_SIGNING = "CMS"` makes and SWUpdate's
`CONFIG_SIGALG_CMS` checks), and `write_swu` (cpio "crc": sw-description,
sw-description.sig, the image; SWUpdate reads them in that order).

After signing, `build_swu` checks the signature against the certificate it
was given (`cms.check_signature`, OpenSSL's CMS code as the layer's SWUpdate
runs it): a
certificate SWUpdate would refuse (wrong key usage, expired) stops the build
instead of every device's install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from twelvefactor_services.artifact import ArtifactToolError
from twelvefactor_services.artifact.cms import Signer, check_signature, run, sign, tool
from twelvefactor_services.artifact.swu import (
    DESCRIPTION,
    SIGNATURE,
    SwuError,
    write_archive,
)
from twelvefactor_services.artifact.template import (
    COMPRESSIONS,
    DELTA_TEMPLATE_NAME,
    Hardware,
    check_hardware,
    check_url,
    check_version,
    default_template,
    delta_description,
    delta_image_names,
    description,
    image_name,
)
from twelvefactor_services.artifact.zchunk import data_size, make_zck, write_header

ZSTD_LEVEL = 3  # oe-core's ZSTD_COMPRESSION_LEVEL default
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
EXT4_MAGIC_AT, EXT4_MAGIC = 1080, b"\x53\xef"  # the superblock's s_magic, little-endian


@dataclass(frozen=True)
class BuiltDelta:
    swu: Path  # the signed .swu: sw-description, its signature, the zchunk header
    zck: Path  # the zchunk file the artifact server serves, named in the .swu by digest
    zck_sha256: str
    description: str


@dataclass(frozen=True)
class Built:
    path: Path
    description: str
    image: str  # the image's name in the archive
    sha256: str  # the image's digest, as sw-description names it
    signed: bool


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def image_kind(path: Path) -> str:
    """ "ext4" or "zstd" (already compressed); anything else is refused."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(EXT4_MAGIC_AT)
            magic = f.read(2)
    except OSError as exc:
        raise ArtifactToolError(f"{path}: {exc.strerror}") from None
    if head == ZSTD_MAGIC:
        return "zstd"
    if magic == EXT4_MAGIC:
        return "ext4"
    raise ArtifactToolError(
        f"{path} is neither an ext4 file system nor zstd-compressed; give the root file"
        f" system (e.g. twelvefactor-image-<board>.rootfs.ext4), not a disk image (.wic)"
    )


def compress_zstd(src: Path, out: Path) -> Path:
    """zstd (`compressed = "zstd"` in sw-description) as oe-core's conversion makes it:
    one frame with its content checksum; single-threaded, so reproducible."""
    zstd = tool("zstd", "zstd")
    run([zstd, f"-{ZSTD_LEVEL}", "-T1", "-q", "-f", "--check", src, "-o", out], "zstd")
    return out


def write_swu(out: Path, members: Sequence[tuple[str, Path]]) -> Path:
    """The archive of `members` (name, file) at `out`, written beside it and then renamed."""
    if not members or members[0][0] != DESCRIPTION:
        raise ArtifactToolError(f"a .swu starts with {DESCRIPTION}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write_archive(f, members)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out)
    except SwuError as exc:
        raise ArtifactToolError(str(exc)) from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return out


def build_swu(
    rootfs: Path,
    out: Path,
    *,
    version: str,
    hardware: Sequence[Hardware],
    signer: Signer | None,
    compress: str = "zstd",
    template: Path | None = None,
) -> Built:
    """`out`: a .swu installing `rootfs` (an ext4 image, or one already zstd-compressed)
    into the slot not running, signed by `signer` (None: unsigned, for tests)."""
    check_version(version)
    check_hardware(hardware)
    if compress not in COMPRESSIONS:
        raise ArtifactToolError(f"--compress {compress!r} is not one of {', '.join(COMPRESSIONS)}")
    template_text = _read_template(template or default_template())
    kind = image_kind(rootfs)
    if kind == "zstd" and compress == "none":
        raise ArtifactToolError(
            f"{rootfs} is zstd-compressed and --compress none was given: give the .ext4"
        )
    name = image_name(hardware[0].board, compress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".twelvefactor-artifact-", dir=out.parent) as tmp:
        work = Path(tmp)
        packed = (
            compress_zstd(rootfs, work / name) if kind == "ext4" and compress == "zstd" else rootfs
        )
        digest = sha256_file(packed)
        text = description(
            template_text,
            version=version,
            hardware=hardware,
            image=name,
            sha256=digest,
            compress=compress,
        )
        desc = work / DESCRIPTION
        desc.write_text(text)
        members = [(DESCRIPTION, desc), *_signature(text, signer, work)]
        members.append((name, packed))
        write_swu(out, members)
    return Built(out, text, name, digest, signer is not None)


def _read_template(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactToolError(f"template {path}: {exc}") from None


def _signature(text: str, signer: Signer | None, work: Path) -> list[tuple[str, Path]]:
    """The signature member over `text` (none without `signer`), checked as SWUpdate will."""
    if signer is None:
        return []
    sig = sign(text.encode(), signer)
    problem = check_signature(text.encode(), sig, signer.cert, partial_chain=True)
    if problem is not None:
        raise ArtifactToolError(
            f"the signature does not verify against {signer.cert} as SWUpdate checks it: {problem}"
        )
    (work / SIGNATURE).write_bytes(sig)
    return [(SIGNATURE, work / SIGNATURE)]


def build_delta(
    rootfs: Path,
    out: Path,
    zck_out: Path,
    *,
    version: str,
    hardware: Sequence[Hardware],
    signer: Signer | None,
    url: str,
    template: Path | None = None,
) -> BuiltDelta:
    """`out`: a delta .swu for `rootfs` (ext4, or its .zst), and `zck_out`: the zchunk file
    its chunks come from, which the management service serves at
    `url`/artifacts/<its sha256>.zck (the twelvefactor-update-delta recipe's pair)."""
    check_version(version)
    check_hardware(hardware)
    url = check_url(url)
    template_text = _read_template(template or default_template(DELTA_TEMPLATE_NAME))
    kind = image_kind(rootfs)
    zck_name, header_name = delta_image_names(hardware[0].board)
    out.parent.mkdir(parents=True, exist_ok=True)
    zck_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".twelvefactor-artifact-", dir=out.parent) as tmp:
        work = Path(tmp)
        raw = rootfs
        if kind == "zstd":  # the chunks are cut from the file system as it is on the slot
            raw = work / "rootfs.ext4"
            run([tool("zstd", "zstd"), "-d", "-q", "-f", rootfs, "-o", raw], "zstd -d")
        zck = make_zck(raw, work / zck_name)
        header = write_header(zck, work / header_name)
        zck_sha = sha256_file(zck)
        text = delta_description(
            template_text,
            version=version,
            hardware=hardware,
            header=header_name,
            header_sha256=sha256_file(header),
            zck=zck_name,
            zck_sha256=zck_sha,
            url=url,
            size=data_size(header.read_bytes()),
        )
        desc = work / DESCRIPTION
        desc.write_text(text)
        members = [(DESCRIPTION, desc), *_signature(text, signer, work), (header_name, header)]
        write_swu(out, members)
        shutil.move(zck, zck_out)
    return BuiltDelta(out, zck_out, zck_sha, text)
