"""A signed .swu that installs this image's root file system into the other slot.

Made with the artifact tool's functions (`twelvefactor_services.artifact`,
the `twelvefactor-artifact` command), so there is one way to make an
artifact here: the layer's sw-description template rendered as
meta-swupdate's class does it (@@VAR@@ values, $swupdate_get_sha256()
replaced by the image file's digest), the image zstd-compressed as oe-core
compresses it, sw-description signed (CMS, detached DER), then a cpio
archive in the "crc" (newc) format with sw-description first and its
signature second. What is this builder's own: the board and revision come
from the image's /etc/hwrevision, and the signer is the layer's development
key, the certificate the image trusts.

The .swu holds one ext4 image, whatever its label: sw-description writes it to
the partition of the slot not running, and grub.cfg finds a slot by its
partition number, so the same file installs from A to B and from B to A.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from twelvefactor_services.artifact import ArtifactToolError, cms
from twelvefactor_services.artifact import build as artifact
from twelvefactor_services.artifact import swu as swuformat
from twelvefactor_services.artifact import template as swtemplate

from refimage import partfs
from refimage.progress import BuildError

SIGNING_DIR = Path("meta-twelvefactor/files/dev-signing")
SIGNING_KEY = SIGNING_DIR / "twelvefactor-dev-update.key"
SIGNING_CERT = SIGNING_DIR / "twelvefactor-dev-update.crt"
DESCRIPTION = swuformat.DESCRIPTION
SIGNATURE = swuformat.SIGNATURE
ZSTD_LEVEL = artifact.ZSTD_LEVEL
COMPRESS = "zstd"  # every .swu the layer makes (docs/decisions.md)
sha256_file = artifact.sha256_file


@contextmanager
def _as_build_error() -> Iterator[None]:
    """The tool's refusals as this builder's errors (the CLI reports BuildError)."""
    try:
        yield
    except ArtifactToolError as exc:
        raise BuildError(str(exc)) from None


def template(top: Path) -> Path:
    with _as_build_error():
        return swtemplate.layer_template(top)


def signer(top: Path) -> cms.Signer:
    return cms.Signer(top / SIGNING_KEY, top / SIGNING_CERT)


def hwrevision(disk_image: Path) -> tuple[str, str]:
    """(board, revision) from the image's /etc/hwrevision, SWUpdate's own file."""
    words = partfs.read_text(disk_image, "rootfs-a", "/etc/hwrevision").split()
    if len(words) != 2:
        raise BuildError(f"/etc/hwrevision of {disk_image} is not 'board revision': {words}")
    return words[0], words[1]


def image_name(board: str) -> str:
    """The rootfs file's name in the .swu, as the twelvefactor-update recipe names it."""
    return swtemplate.image_name(board, COMPRESS)


def render(text: str, values: dict[str, str], files: dict[str, Path]) -> str:
    """meta-swupdate's substitutions, with the digests of `files` (name -> file)."""
    with _as_build_error():
        return swtemplate.render(text, values, {n: sha256_file(p) for n, p in files.items()})


def description(
    top: Path, *, version: str, board: str, revision: str, packed: Path, name: str
) -> str:
    """The layer's sw-description rendered for the compressed image `packed` (named `name`)."""
    with _as_build_error():
        return swtemplate.description(
            template(top).read_text(),
            version=version,
            hardware=[swtemplate.Hardware(board, (revision,))],
            image=name,
            sha256=sha256_file(packed),
            compress=COMPRESS,
        )


def compress(fs: Path, out: Path) -> Path:
    with _as_build_error():
        return artifact.compress_zstd(fs, out)


def sign(top: Path, text: str) -> bytes:
    """The CMS signature over sw-description `text` with the layer's development key."""
    with _as_build_error():
        return cms.sign(text.encode(), signer(top))


def pack(out: Path, members: Sequence[tuple[str, Path]]) -> Path:
    """The .swu of `members` (name in the archive, file), sw-description first."""
    with _as_build_error():
        return artifact.write_swu(out, members)


def build_swu(top: Path, disk_image: Path, rootfs: Path, out: Path, *, version: str) -> Path:
    """`out`: a signed .swu whose image is `rootfs`, installable into either slot."""
    board, revision = hwrevision(disk_image)
    with _as_build_error():
        artifact.build_swu(
            rootfs,
            out,
            version=version,
            hardware=[swtemplate.Hardware(board, (revision,))],
            signer=signer(top),
            compress=COMPRESS,
            template=template(top),
        )
    return out
