"""The base root file system: Debian packages unpacked and configured by mmdebstrap.

This stage depends only on the package list (refimage/packages.py, derived
from the layer) and this file, so it is cached apart from the layer files and
the agent, which change far more often. Downloaded .deb files are kept in a
cache beside it.

mmdebstrap mounts /proc (and more) inside the tree it builds, and a run that
was killed, or whose /proc was busy when it finished ("umount /proc failed"),
leaves them mounted. Deleting such a tree would walk into the host's /proc;
copying it would copy it. So every tree is unmounted below before it is used
or removed, and removal refuses to run while anything is still mounted there.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from refimage import packages
from refimage.progress import BuildError, run


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_below(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first."""
    top = os.path.realpath(path)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if point == top or point.startswith(top.rstrip("/") + "/"):
            found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_below(path: Path) -> None:
    """Unmount everything mounted at or below `path` (lazily when busy)."""
    for point in mounts_below(path):
        try:
            run(["umount", point])
        except BuildError:
            run(["umount", "--lazy", point])
    left = mounts_below(path)
    if left:
        raise BuildError(f"still mounted below {path}: {[str(p) for p in left]}")


def remove_tree(path: Path) -> None:
    """Delete a build tree, never following into a file system mounted inside it."""
    if not path.exists() and not path.is_symlink():
        return
    unmount_below(path)
    if mounts_below(path):  # unmount_below raised already; kept as the last guard
        raise BuildError(f"refusing to delete {path}: something is mounted below it")
    shutil.rmtree(path)


# binfmt_misc entries that run another architecture's programs (QEMU user
# emulation), which mmdebstrap needs to configure a foreign tree
BINFMT = Path("/proc/sys/fs/binfmt_misc")
EMULATORS = {"arm64": "qemu-aarch64"}


def check_emulation(arch: str) -> None:
    """A foreign tree's maintainer scripts run through QEMU user emulation:
    refuse early, and say how, when binfmt_misc does not hand them to QEMU."""
    name = EMULATORS.get(arch)
    if name is None or os.uname().machine == {"arm64": "aarch64"}.get(arch):
        return
    entry = BINFMT / name
    if not entry.is_file() or "enabled" not in entry.read_text().splitlines()[0]:
        raise BuildError(
            f"building an {arch} tree needs {entry} enabled (QEMU user emulation): "
            "scripts/setup mounts binfmt_misc and registers qemu-user-static's entry"
        )


def build_base(dest: Path, apt_cache: Path, log: Path, machine: str = "qemux86-64") -> None:
    """Run mmdebstrap into `dest` (a new directory): the image's packages for `machine`."""
    arch = packages.arch(machine)
    check_emulation(arch)
    remove_tree(dest)
    apt_cache.mkdir(parents=True, exist_ok=True)
    modules = "\\n".join(packages.initramfs_modules(machine))
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
        # The kernel's postinst builds an initramfs and initramfs-tools' trigger builds
        # it again at the end (about 40 s each under QEMU user emulation): INITRD=No
        # stops the first and leaves the trigger nothing to update, and the customize
        # hook builds it once, with every package's hooks in place.
        "env",
        "INITRD=No",
        "mmdebstrap",
        "--mode=root",
        f"--variant={packages.VARIANT}",
        f"--architectures={arch}",
        "--include=" + ",".join(packages.for_machine(machine)),
        *(f"--dpkgopt={opt}" for opt in packages.DPKG_EXCLUDES),
        # Keep downloaded packages between builds (mmdebstrap's documented recipe).
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1/var/cache/apt/archives/"',
        f"--setup-hook=sync-in {cache} /var/cache/apt/archives/",
        f"--setup-hook={initramfs_setup}",
        '--customize-hook=chroot "$1" update-initramfs -c -k all',
        f"--customize-hook=sync-out /var/cache/apt/archives {cache}",
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        packages.SUITE,
        dest,
        packages.MIRROR,
    ]
    try:
        run(argv, log=log)
    finally:
        unmount_below(dest)
