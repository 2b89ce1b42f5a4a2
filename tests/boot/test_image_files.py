"""GUIDE section 3: every file the layer's recipes install is in the image,
byte for byte and with the recipe's mode, at the recipe's path. Read from the
image's rootfs-a partition without mounting it (debugfs), so it holds for any
image under test, the reference image or a Yocto build.
"""

from __future__ import annotations

from pathlib import Path

from helpers import require_tool

from refimage import layer, partfs

ROOT = Path(__file__).resolve().parents[2]


def test_every_layer_file_is_identical_in_the_image(boot_image: Path) -> None:
    require_tool("debugfs")
    files = layer.device_files(ROOT)  # refimage/layer_files.py, read from the recipes
    assert files, "the layer lists no device files"
    problems = []
    for f in files:
        try:
            content = partfs.read(boot_image, "rootfs-a", f.destination)
        except FileNotFoundError as exc:
            problems.append(f"{f.destination}: missing ({exc})")
            continue
        if content != f.source.read_bytes():
            problems.append(f"{f.destination}: differs from {f.source}")
        actual = partfs.mode(boot_image, "rootfs-a", f.destination)
        if actual != f.mode:
            problems.append(f"{f.destination}: mode {actual:04o}, the recipe installs {f.mode:04o}")
    assert problems == [], "\n".join(problems)
