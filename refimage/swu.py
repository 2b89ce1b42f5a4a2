"""A signed .swu that installs this image's root file system into the other slot.

Rendered from the layer's sw-description template (twelvefactor-update recipe)
the way meta-swupdate's class does it: @@VAR@@ values, $swupdate_get_sha256()
replaced by the image file's digest, sw-description signed with `openssl cms`
(the layer's CMS signing key), then a cpio archive in the "crc" (newc) format
with sw-description first and its signature second.

The .swu holds one ext4 image, whatever its label: sw-description writes it to
the partition of the slot not running, and grub.cfg finds a slot by its
partition number, so the same file installs from A to B and from B to A.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

from refimage import layer, partfs
from refimage.progress import BuildError, run

SIGNING_DIR = Path("meta-twelvefactor/files/dev-signing")
SIGNING_KEY = SIGNING_DIR / "twelvefactor-dev-update.key"
SIGNING_CERT = SIGNING_DIR / "twelvefactor-dev-update.crt"
DESCRIPTION = "sw-description"
SIGNATURE = "sw-description.sig"
# oe-core's ZSTD_COMPRESSION_LEVEL default, as the layer's ext4.zst is made
ZSTD_LEVEL = 3


def template(top: Path) -> Path:
    found = sorted(p for p in (top / layer.LAYER).rglob("sw-description") if p.is_file())
    if len(found) != 1:
        raise BuildError(f"expected one sw-description template in the layer, found {found}")
    return found[0]


def hwrevision(disk_image: Path) -> tuple[str, str]:
    """(board, revision) from the image's /etc/hwrevision, SWUpdate's own file."""
    words = partfs.read_text(disk_image, "rootfs-a", "/etc/hwrevision").split()
    if len(words) != 2:
        raise BuildError(f"/etc/hwrevision of {disk_image} is not 'board revision': {words}")
    return words[0], words[1]


def image_name(board: str) -> str:
    """The rootfs file's name in the .swu, as the twelvefactor-update recipe names it."""
    return f"twelvefactor-image-{board}.rootfs.ext4.zst"


def render(text: str, values: dict[str, str], files: dict[str, Path]) -> str:
    def value(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise BuildError(f"sw-description: no value for @@{m.group(1)}@@")
        return values[m.group(1)]

    text = re.sub(r"@@([A-Z0-9_]+)@@", value, text)

    def digest(m: re.Match[str]) -> str:
        name = m.group(1).strip()
        if name not in files:
            raise BuildError(f"sw-description: $swupdate_get_sha256({name}) names no file")
        return sha256_file(files[name])

    return re.sub(r"\$swupdate_get_sha256\(([^)]+)\)", digest, text)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def description(
    top: Path, *, version: str, board: str, revision: str, packed: Path, name: str
) -> str:
    """The layer's sw-description rendered for the compressed image `packed` (named `name`)."""
    values = {
        "TWELVEFACTOR_UPDATE_VERSION": version,
        "MACHINE": board,
        "TWELVEFACTOR_HW_REVISION": revision,
        "TWELVEFACTOR_ROOTFS_IMAGE": name,
    }
    return render(template(top).read_text(), values, {name: packed})


def compress(fs: Path, out: Path) -> Path:
    """zstd (`compressed = "zstd"` in sw-description) as oe-core's conversion makes it:
    one frame with its content checksum; single-threaded, so reproducible."""
    run(["zstd", f"-{ZSTD_LEVEL}", "-T1", "-q", "-f", "--check", fs, "-o", out])
    return out


def sign(top: Path, desc: Path, sig: Path) -> None:
    """CMS signature (DER, detached) over sw-description with the layer's development key."""
    run(
        [
            "openssl",
            "cms",
            "-sign",
            "-in",
            desc,
            "-out",
            sig,
            "-signer",
            top / SIGNING_CERT,
            "-inkey",
            top / SIGNING_KEY,
            "-outform",
            "DER",
            "-nosmimecap",
            "-binary",
        ]
    )


def pack(folder: Path, names: list[str], out: Path) -> Path:
    """cpio -H crc of `names` in `folder`, in that order (symlinks followed)."""
    if names[0] != DESCRIPTION:
        raise BuildError(f"a .swu starts with {DESCRIPTION}, not {names[0]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as archive:
        done = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "crc", "--dereference"],
            input="\n".join(names).encode(),
            cwd=folder,
            stdout=archive,
            stderr=subprocess.PIPE,
            check=False,
        )
    if done.returncode != 0:
        raise BuildError(f"cpio: {done.stderr.decode(errors='replace')}")
    return out


def build_swu(top: Path, disk_image: Path, rootfs: Path, out: Path, *, version: str) -> Path:
    """`out`: a signed .swu whose image is `rootfs`, installable into either slot."""
    board, revision = hwrevision(disk_image)
    name = image_name(board)
    with tempfile.TemporaryDirectory(prefix="refimage-swu-") as tmp:
        work = Path(tmp)
        packed = compress(rootfs, work / name)
        text = description(
            top, version=version, board=board, revision=revision, packed=packed, name=name
        )
        desc = work / DESCRIPTION
        desc.write_text(text)
        sign(top, desc, work / SIGNATURE)
        pack(work, [DESCRIPTION, SIGNATURE, name], out)
    return out
