"""A signed .swu that installs this image's root file system into the other slot.

Rendered from the layer's sw-description template (twelvefactor-update recipe)
the way meta-swupdate's class does it: @@VAR@@ values, $swupdate_get_sha256()
replaced by the image file's digest, sw-description signed with `openssl cms`
(the layer's CMS signing key), then a cpio archive in the "crc" (newc) format
with sw-description first and its signature second.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from refimage import layer, partfs
from refimage.progress import BuildError, run

SIGNING_DIR = Path("meta-twelvefactor/files/dev-signing")
SIGNING_KEY = SIGNING_DIR / "twelvefactor-dev-update.key"
SIGNING_CERT = SIGNING_DIR / "twelvefactor-dev-update.crt"
SLOT_LABELS = {"A": "rootfs-a", "B": "rootfs-b"}


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
        return hashlib.sha256(files[name].read_bytes()).hexdigest()

    return re.sub(r"\$swupdate_get_sha256\(([^)]+)\)", digest, text)


def build_swu(
    top: Path, disk_image: Path, rootfs: Path, out: Path, *, slot: str, version: str
) -> Path:
    """`out`: a .swu whose image is `rootfs` labelled for `slot` (A or B)."""
    if slot not in SLOT_LABELS:
        raise BuildError(f"slot must be A or B, not {slot!r}")
    board, revision = hwrevision(disk_image)
    image_name = f"twelvefactor-image-{board}.rootfs.ext4.gz"
    with tempfile.TemporaryDirectory(prefix="refimage-swu-") as tmp:
        work = Path(tmp)
        fs = work / "rootfs.ext4"
        run(["cp", "--sparse=always", rootfs, fs])
        # grub.cfg finds a slot by its file-system label
        run(["e2label", fs, SLOT_LABELS[slot]])
        packed = work / image_name
        with fs.open("rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
        values = {
            "TWELVEFACTOR_UPDATE_VERSION": version,
            "MACHINE": board,
            "TWELVEFACTOR_HW_REVISION": revision,
            "TWELVEFACTOR_ROOTFS_IMAGE": image_name,
        }
        desc = work / "sw-description"
        desc.write_text(render(template(top).read_text(), values, {image_name: packed}))
        run(
            [
                "openssl",
                "cms",
                "-sign",
                "-in",
                desc,
                "-out",
                work / "sw-description.sig",
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
        names = ["sw-description", "sw-description.sig", image_name]
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("wb") as archive:
            done = subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "crc"],
                input="\n".join(names).encode(),
                cwd=work,
                stdout=archive,
                stderr=subprocess.PIPE,
                check=False,
            )
        if done.returncode != 0:
            raise BuildError(f"cpio: {done.stderr.decode(errors='replace')}")
    return out
