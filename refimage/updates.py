"""Update images for the tests: signed .swu files made from a built image's rootfs-a.

Each kind is the image's root file system with a few files changed in an ext4
copy (debugfs, nothing mounted), then sized as oe-core sizes the ext4 image of
the Yocto .swu (refimage/imagesize.py), zstd-compressed and
packed like the twelvefactor-update recipe packs it, by the artifact tool's
functions (refimage/swu.py; twelvefactor_services.artifact):

  good       /usr/lib/os-release VERSION_ID (and VERSION, PRETTY_NAME, CPE_NAME)
             set to the requested version; signed; hardware = the image's
             /etc/hwrevision. An "older" update is a good one with a lower version.
  broken     like good, plus a drop-in that replaces the agent's ExecStart with
             /bin/false: the device boots and reaches the network, but the agent
             never comes online, so the new slot never confirms itself.
  unsigned   like good, without sw-description.sig.
  tampered   like good, then the compressed image changed after signing
             (sw-description and its signature intact): a zstd skippable frame
             put before it, which decompression passes over, so the stream
             still decompresses to the same file system and the sha256 in
             sw-description is the only thing that can refuse it.
  other-hw   like good, but hardware-compatibility names a revision the image's
             /etc/hwrevision does not have.
  package    a one-package release: like good, plus the agent's version
             (twelvefactor_agent.__version__ + "+r<version>", which it reports to
             the management service) and one Debian package, dosfstools, replaced
             by another Debian release's build of it (bookworm's 4.2-1, pinned by
             its pool path and sha256, fetched once from the Debian mirror):
             its programs change throughout, as a rebuilt package's do, and
             fsck.fat runs at every boot (boot.mount's systemd-fsck@), so a
             device that confirms the release has run it. x86-64 images only.

Everything is cached under OUT_ROOT/updates, keyed by its inputs: the image
(its refimage key, or the digest of its rootfs-a partition), the kind, the
version, the sw-description template, the signing key and certificate, and
this builder's code and the artifact tool's. The changed file systems are
cached apart from the .swu files, so good, unsigned, tampered and other-hw of
one version share one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import twelvefactor_services.artifact
from twelvefactor_services.artifact import ArtifactToolError
from twelvefactor_services.artifact import swu as swuformat
from twelvefactor_services.artifact.template import check_version

from refimage import agent, disk, image, imagesize, packages, swu
from refimage.lock import locked
from refimage.progress import BuildError, run, say, step

UPDATES = "updates"
SWU_NAME = "update.swu"
ROOTFS_NAME = "rootfs.ext4.zst"
MANIFEST = "manifest.json"
FETCH_SECONDS = 60  # one 142 kB .deb from the Debian mirror
KEEP = 16  # cache folders kept (about 90 MB each); the least recently used go first
# ... but none used within this long: the boot tier's sessions build into one cache at
# once (about 26 folders in a run), and one must not remove what another is installing
KEEP_SECONDS = 3 * 3600
BUILDER = Path(__file__).resolve()

OS_RELEASE = "/etc/os-release"
# systemd reads drop-ins below /usr/lib too; the unit itself is /usr/lib/systemd/system's.
BROKEN_DROPIN_DIR = "/usr/lib/systemd/system/twelvefactor-agent.service.d"
BROKEN_DROPIN = f"{BROKEN_DROPIN_DIR}/99-broken.conf"
BROKEN_DROPIN_TEXT = """\
# twelvefactor test update "broken": the agent never starts, so this slot
# never confirms itself and the boot counter runs out.
[Service]
ExecStart=
ExecStart=/bin/false
"""
# A zstd skippable frame (RFC 8878 3.1.2): magic 0x184D2A50-5F, length, data; decoders skip it.
SKIPPABLE_FRAME = struct.pack("<II", 0x184D2A5E, 8) + b"tampered"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# The package kind's package: a leaf (its programs need only libc), so another
# release's build of it runs on this image's libraries.
PACKAGE_NAME = "dosfstools"
PACKAGE_POOL = "pool/main/d/dosfstools/dosfstools_4.2-1_amd64.deb"
PACKAGE_SHA256 = "71b0471242f7bb777264cdab55c141f1fc043b443105633a38708e125f90c4ea"
PACKAGE_PROBE = "/usr/sbin/fsck.fat"  # a file the image must have from that package
AGENT_INIT = f"/{agent.DIST_PACKAGES}/twelvefactor_agent/__init__.py"
AGENT_VERSION_RE = re.compile(r'^__version__ = "([^"]+)"$', re.M)


@dataclass(frozen=True)
class Kind:
    broken: bool = False  # the root file system with the broken agent drop-in
    package: bool = False  # ... with one package and the agent's version changed
    signed: bool = True
    tampered: bool = False
    other_hw: bool = False

    @property
    def variant(self) -> str:
        """Its root file system: kinds of one variant and version share one."""
        return "broken" if self.broken else "package" if self.package else "plain"


KINDS: dict[str, Kind] = {
    "good": Kind(),
    "broken": Kind(broken=True),
    "unsigned": Kind(signed=False),
    "tampered": Kind(tampered=True),
    "other-hw": Kind(other_hw=True),
    "package": Kind(package=True),
}


def check(kind: str, version: str) -> None:
    """Refuse an unknown kind or a version the agent could not compare."""
    if kind not in KINDS:
        raise BuildError(f"unknown update kind {kind!r}; one of {', '.join(KINDS)}")
    try:
        check_version(version)  # the agent's rule (protocol.names.VERSION_RE)
    except ArtifactToolError as exc:
        raise BuildError(str(exc)) from None


def build(top: Path, image_path: Path, out_root: Path, *, kind: str, version: str) -> Path:
    """The .swu of `kind` at `version` made from the disk image `image_path` (cached)."""
    check(kind, version)
    if not image_path.is_file():
        raise BuildError(f"no disk image at {image_path}")
    spec = KINDS[kind]
    folder = out_root.resolve() / UPDATES
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder):
        ident = image_identity(image_path)
        board, revision = swu.hwrevision(image_path)
        fs_key = _key(ident, spec.variant, version, _code())
        key = _key(fs_key, kind, *_signing_inputs(top))
        name = f"{kind}-{version}-{key[:16]}"
        out = folder / name / SWU_NAME
        if out.is_file():
            say(f"update {kind} {version}: cached ({name})")
            os.utime(out.parent)
            return out
        packed = _rootfs(folder, fs_key, image_path, ident, spec, version)
        with step(f"update {kind} {version}: sw-description, signature, cpio"):
            hardware = f"{revision}-other" if spec.other_hw else revision
            _swu(top, folder / name, packed, spec, board, hardware, version)
        _write_manifest(
            folder / name,
            {
                "kind": kind,
                "version": version,
                "image": str(image_path),
                "image_identity": ident,
                "board": board,
                "hardware_compatibility": hardware,
                "rootfs": str(packed),
            },
        )
        _prune(folder, keep={folder / name, packed.parent})
    return out


def image_identity(image_path: Path) -> str:
    """What names the image's content: its refimage key, else its rootfs-a's digest."""
    manifest = image_path.parent / image.MANIFEST
    if image_path.name == image.DISK_NAME and manifest.is_file():
        key = json.loads(manifest.read_text()).get("key")
        if isinstance(key, str) and key:
            return f"refimage-{key}"
    offset, size = disk.read_table(image_path)["rootfs-a"]
    h = hashlib.sha256()
    with image_path.open("rb") as f:
        f.seek(offset)
        left = size
        while left:
            chunk = f.read(min(left, 4 * 1024 * 1024))
            if not chunk:
                raise BuildError(f"{image_path} ends inside its rootfs-a partition")
            h.update(chunk)
            left -= len(chunk)
    return f"rootfs-a-sha256-{h.hexdigest()}"


def os_release_with_version(text: str, version: str) -> str:
    """os-release text with VERSION_ID = `version`, and the old version replaced in
    VERSION, PRETTY_NAME and CPE_NAME (oe-core derives all of them from DISTRO_VERSION)."""
    old: str | None = None
    for line in text.splitlines():
        if line.startswith("VERSION_ID="):
            old = line.split("=", 1)[1].strip().strip("\"'")
    lines: list[str] = []
    for line in text.splitlines():
        name = line.split("=", 1)[0]
        if name == "VERSION_ID":
            line = f"VERSION_ID={version}"
        elif old and name in ("VERSION", "PRETTY_NAME", "CPE_NAME"):
            line = re.sub(rf"(?<![0-9.]){re.escape(old)}(?![0-9])", version, line)
        lines.append(line)
    if old is None:
        lines.append(f"VERSION_ID={version}")
    return "\n".join(lines) + "\n"


def _code() -> str:
    """This builder's code and the artifact tool's, so a change to either rebuilds."""
    tool = Path(twelvefactor_services.artifact.__file__).parent
    h = hashlib.sha256()
    for path in (
        BUILDER,
        BUILDER.parent / "swu.py",
        BUILDER.parent / "disk.py",
        BUILDER.parent / "imagesize.py",
        *sorted(tool.glob("*.py")),
        Path(swuformat.__file__),
    ):
        h.update(path.read_bytes())
    return h.hexdigest()


def _signing_inputs(top: Path) -> list[str]:
    files = [swu.template(top), top / swu.SIGNING_KEY, top / swu.SIGNING_CERT]
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]


def _key(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p.encode())
    return h.hexdigest()


def _rootfs(
    folder: Path, fs_key: str, image_path: Path, ident: str, spec: Kind, version: str
) -> Path:
    """The compressed, changed copy of rootfs-a (cached by fs_key)."""
    variant = spec.variant
    done = folder / f"rootfs-{variant}-{version}-{fs_key[:16]}"
    packed = done / ROOTFS_NAME
    if packed.is_file():
        say(f"rootfs {variant} {version}: cached ({done.name})")
        os.utime(done)
        return packed
    work = folder / f"work-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        fs = work / "rootfs.ext4"
        with step(f"rootfs {variant} {version}: rootfs-a copied out, files changed (debugfs)"):
            disk.extract(image_path, "rootfs-a", fs)
            _change(fs, work, broken=spec.broken, version=version)
            if spec.package:
                _change_package(fs, work, fetch_package(folder.parent), version)
        with step(f"rootfs {variant} {version}: sized as oe-core sizes an ext4 image"):
            imagesize.shrink_like_oe(fs)
        with step(f"rootfs {variant} {version}: zstd -{swu.ZSTD_LEVEL}"):
            swu.compress(fs, work / ROOTFS_NAME)
        fs.unlink()
        _write_manifest(
            work,
            {
                "variant": variant,
                "version": version,
                "image": str(image_path),
                "image_identity": ident,
            },
        )
        _publish(work, done)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return packed


def _change(fs: Path, work: Path, *, broken: bool, version: str) -> None:
    """Write the kind's files into the ext4 image `fs`, then read them back to check."""
    release_path = _resolve(fs, OS_RELEASE)
    release = os_release_with_version(_cat(fs, release_path).decode(), version)
    wanted = {release_path: release}
    if broken:
        wanted[BROKEN_DROPIN] = BROKEN_DROPIN_TEXT
    requests: list[str] = [f'rm "{release_path}"']
    if broken and _stat(fs, BROKEN_DROPIN_DIR) is None:
        requests.append(f'mkdir "{BROKEN_DROPIN_DIR}"')
    for i, (dest, text) in enumerate(wanted.items()):
        src = work / f"file-{i}"
        src.write_text(text)
        src.chmod(0o644)  # debugfs gives the new inode the source's mode
        if dest != release_path and _stat(fs, dest) is not None:
            requests.append(f'rm "{dest}"')
        requests.append(f'write "{src}" "{dest}"')
    _debugfs(fs, requests, write=True)
    for dest, text in wanted.items():
        if _cat(fs, dest).decode() != text:
            raise BuildError(f"debugfs did not write {dest} into {fs}")


def fetch_package(out_root: Path) -> Path:
    """The package kind's .deb, from the builder's apt cache or the Debian mirror."""
    cache = out_root / "apt-cache"
    cache.mkdir(parents=True, exist_ok=True)
    deb = cache / Path(PACKAGE_POOL).name
    if not deb.is_file():
        url = f"{packages.MIRROR}/{PACKAGE_POOL}"
        partial = deb.with_name(f"{deb.name}.part-{os.getpid()}")
        try:
            with urllib.request.urlopen(url, timeout=FETCH_SECONDS) as answer:
                partial.write_bytes(answer.read())
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise BuildError(
                f"the package update's {PACKAGE_NAME}: cannot fetch {url}: {exc}"
            ) from None
        partial.rename(deb)
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    if digest != PACKAGE_SHA256:
        deb.unlink()
        raise BuildError(
            f"{deb.name} from the mirror has sha256 {digest}, not the pinned {PACKAGE_SHA256}"
        )
    return deb


def package_files(tree: Path) -> tuple[list[str], dict[str, Path], dict[str, str]]:
    """What an unpacked .deb (`tree`, from dpkg-deb -x) puts on the image, as dpkg with
    the image's DPKG_EXCLUDES would: its regular files and symbolic links, and the
    folders they are in (parents first)."""
    files: dict[str, Path] = {}
    links: dict[str, str] = {}
    for path in sorted(tree.rglob("*")):
        dest = "/" + path.relative_to(tree).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if not packages.installed(dest):
            continue
        if path.is_symlink():
            links[dest] = os.readlink(path)
        elif path.is_file():
            files[dest] = path
        else:
            raise BuildError(f"{dest} in the package is neither a file, a folder nor a link")
    folders = sorted(
        {str(parent) for dest in [*files, *links] for parent in Path(dest).parents} - {"/"},
        key=lambda f: (f.count("/"), f),
    )
    return folders, files, links


def _change_package(fs: Path, work: Path, deb: Path, version: str) -> None:
    """Replace the package's files in `fs` with the .deb's, and set the agent's version."""
    if _stat(fs, PACKAGE_PROBE) is None:
        raise BuildError(
            f"the image has no {PACKAGE_PROBE}: the package kind replaces {PACKAGE_NAME}, which"
            " it must have"
        )
    tree = work / "deb"
    run(["dpkg-deb", "-x", deb, tree])
    folders, files, links = package_files(tree)
    # a package built before the /usr merge names /sbin/...; dpkg writes through the
    # image's /sbin -> usr/sbin link, debugfs does not follow links: resolve them here
    top = {f"/{d}": _resolve(fs, f"/{d}") for d in {p.split("/")[1] for p in [*files, *links]}}

    def merged(path: str) -> str:
        first, _, rest = path[1:].partition("/")
        return f"{top[f'/{first}']}/{rest}" if rest else top[f"/{first}"]

    folders = list(dict.fromkeys(merged(f) for f in folders))
    files = {merged(dest): src for dest, src in files.items()}
    if PACKAGE_PROBE in files:  # ELF e_machine: the .deb's programs must run on the image
        theirs, ours = files[PACKAGE_PROBE].read_bytes()[18:20], _cat(fs, PACKAGE_PROBE)[18:20]
        if theirs != ours:
            raise BuildError(
                f"{deb.name} is built for another machine than the image's {PACKAGE_PROBE}"
                f" (ELF e_machine {theirs.hex()} against {ours.hex()}): the package kind is"
                " for x86-64 images"
            )
    links = {merged(dest): target for dest, target in links.items()}
    init = _cat(fs, AGENT_INIT).decode()
    found = AGENT_VERSION_RE.search(init)
    if found is None:
        raise BuildError(f"{AGENT_INIT} sets no __version__")
    agent_init = work / "agent-init.py"
    agent_init.write_text(
        AGENT_VERSION_RE.sub(f'__version__ = "{found.group(1)}+r{version}"', init, count=1)
    )
    agent_init.chmod(0o644)
    files[AGENT_INIT] = agent_init
    requests = [f'mkdir "{d}"' for d in folders if _stat(fs, d) is None]
    for dest, src in files.items():
        if _stat(fs, dest) is not None:
            requests.append(f'rm "{dest}"')
        requests.append(f'write "{src}" "{dest}"')
    for dest, target in links.items():
        if _stat(fs, dest) is not None:
            requests.append(f'rm "{dest}"')
        requests.append(f'symlink "{dest}" "{target}"')
    _debugfs(fs, requests, write=True)
    for dest, src in files.items():
        if _cat(fs, dest) != src.read_bytes():
            raise BuildError(f"debugfs did not write {dest} into {fs}")
    shutil.rmtree(tree)  # the work folder becomes the cache entry
    agent_init.unlink()


def _debugfs(fs: Path, requests: list[str], *, write: bool = False) -> str:
    """Run debugfs requests; debugfs exits 0 on failed requests, so stderr is the verdict."""
    for r in requests:
        if "\n" in r:
            raise BuildError(f"unusable debugfs request {r!r}")
    argv = ["debugfs", *(["-w"] if write else []), "-f", "-", str(fs)]
    done = subprocess.run(
        argv, input="\n".join(requests) + "\n", capture_output=True, text=True, check=False
    )
    errors = [
        line
        for line in done.stderr.splitlines()
        if line.strip() and not line.startswith("debugfs ")  # the version banner
    ]
    if done.returncode != 0 or errors:
        raise BuildError(f"debugfs on {fs}: {'; '.join(errors) or done.returncode}")
    return done.stdout


def _stat(fs: Path, path: str) -> str | None:
    done = subprocess.run(
        ["debugfs", "-R", f'stat "{path}"', str(fs)], capture_output=True, text=True, check=False
    )
    return done.stdout if "Inode:" in done.stdout else None


def _resolve(fs: Path, path: str) -> str:
    """`path`, or where its symlink points (one level, as /etc/os-release is)."""
    stat = _stat(fs, path)
    if stat is None:
        raise BuildError(f"{path} is not in the root file system")
    if "Type: symlink" not in stat:
        return path
    m = re.search(r'Fast link dest: "([^"]+)"', stat)
    if m is None:
        raise BuildError(f"{path} is a symlink debugfs cannot read")
    return os.path.normpath(os.path.join(os.path.dirname(path), m.group(1)))


def _cat(fs: Path, path: str) -> bytes:
    if _stat(fs, path) is None:
        raise BuildError(f"{path} is not in {fs}")
    done = subprocess.run(["debugfs", "-R", f'cat "{path}"', str(fs)], capture_output=True)
    if done.returncode != 0:
        raise BuildError(f"debugfs cat {path}: {done.stderr.decode(errors='replace')}")
    return done.stdout


def _swu(
    top: Path, dest: Path, packed: Path, spec: Kind, board: str, hardware: str, version: str
) -> None:
    """Render, sign and pack into `dest`/update.swu (built in a work folder, then renamed)."""
    work = dest.with_name(f"{dest.name}.work-{os.getpid()}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        name = swu.image_name(board)
        text = swu.description(
            top, version=version, board=board, revision=hardware, packed=packed, name=name
        )
        (work / swu.DESCRIPTION).write_text(text)
        members = [(swu.DESCRIPTION, work / swu.DESCRIPTION)]
        if spec.signed:
            (work / swu.SIGNATURE).write_bytes(swu.sign(top, text))
            members.append((swu.SIGNATURE, work / swu.SIGNATURE))
        image_file = packed  # read from the cache as it is
        if spec.tampered:
            image_file = _tamper(packed, work / name)
        members.append((name, image_file))
        swu.pack(work / SWU_NAME, members)
        if spec.tampered:
            image_file.unlink()
        _publish(work, dest)
    finally:
        if work.exists():
            shutil.rmtree(work)


def _publish(work: Path, dest: Path) -> None:
    """Put a finished build folder in place of `dest` (the cache entry)."""
    if dest.exists():
        shutil.rmtree(dest)
    work.rename(dest)


def _tamper(packed: Path, out: Path) -> Path:
    """`packed` with a skippable frame before its first frame."""
    with packed.open("rb") as src, out.open("wb") as dst:
        if src.read(4) != ZSTD_MAGIC:
            raise BuildError(f"{packed} is not zstd: cannot tamper with it")
        dst.write(SKIPPABLE_FRAME + ZSTD_MAGIC)
        shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
    return out


def _write_manifest(folder: Path, values: dict[str, object]) -> None:
    values = {**values, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (folder / MANIFEST).write_text(json.dumps(values, indent=1) + "\n")


def _prune(folder: Path, keep: set[Path]) -> None:
    """Remove what was made from a reference image the builder has since removed,
    then all but the KEEP most recently used folders (never the ones just used, nor
    any used in the last KEEP_SECONDS)."""
    entries = sorted(
        (p for p in folder.iterdir() if p.is_dir() and (p / MANIFEST).is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for n, entry in enumerate(entries):
        recent = time.time() - entry.stat().st_mtime < KEEP_SECONDS
        if entry not in keep and ((n >= KEEP and not recent) or _image_gone(entry / MANIFEST)):
            shutil.rmtree(entry)


def _image_gone(manifest: Path) -> bool:
    """The entry was made from a reference image that is no longer where it was."""
    try:
        made = json.loads(manifest.read_text())
    except ValueError:
        return False
    ident, path = made.get("image_identity"), made.get("image")
    if not isinstance(ident, str) or not ident.startswith("refimage-") or not isinstance(path, str):
        return False  # another image: only its age removes it
    try:
        return image_identity(Path(path)) != ident
    except (OSError, BuildError, KeyError, ValueError):
        return True
