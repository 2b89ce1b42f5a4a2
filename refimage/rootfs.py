"""The base root file system: Debian packages unpacked and configured by mmdebstrap.

This stage depends only on the package list (refimage/packages.py) and this
file, so it is cached apart from the layer files and the agent, which change
far more often. Downloaded .deb files are kept in a cache beside it.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from refimage import packages
from refimage.progress import run


def build_base(dest: Path, apt_cache: Path, log: Path) -> None:
    """Run mmdebstrap into `dest` (a new directory)."""
    if dest.exists():
        shutil.rmtree(dest)
    apt_cache.mkdir(parents=True, exist_ok=True)
    modules = "\\n".join(packages.INITRAMFS_MODULES)
    # Written before the packages are installed, so the kernel's postinst
    # builds the small initramfs once.
    conf = "$1/etc/initramfs-tools/conf.d/twelvefactor-refimage"
    mods = "$1/usr/share/initramfs-tools/modules.d/twelvefactor-refimage"
    initramfs_setup = (
        'mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"'
        f' && printf "MODULES=list\\n" > "{conf}" && printf "{modules}\\n" > "{mods}"'
    )
    cache = shlex.quote(str(apt_cache))
    argv: list[str | Path] = [
        "mmdebstrap",
        "--mode=root",
        f"--variant={packages.VARIANT}",
        "--include=" + ",".join(packages.PACKAGES),
        *(f"--dpkgopt={opt}" for opt in packages.DPKG_EXCLUDES),
        # Keep downloaded packages between builds (mmdebstrap's documented recipe).
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1/var/cache/apt/archives/"',
        f"--setup-hook=sync-in {cache} /var/cache/apt/archives/",
        f"--setup-hook={initramfs_setup}",
        f"--customize-hook=sync-out /var/cache/apt/archives {cache}",
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        packages.SUITE,
        dest,
        packages.MIRROR,
    ]
    run(argv, log=log)
