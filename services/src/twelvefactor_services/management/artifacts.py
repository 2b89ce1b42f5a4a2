"""The management service's `.swu` store: one file per artifact, named by its sha256.

`<dir>/<sha256>.swu` holds the bytes and `<dir>/<sha256>.json` what we know of
them (version, hardware compatibility from the sw-description, size, when it
was added). Both are written to a temporary name and renamed, so a reader
never sees half an artifact. Adding the same file twice gives the same
artifact.

An artifact may have a delta (issue 14): a second, small `.swu` of the same
release (`<sha>.swu` too, but no record of its own: it is the artifact's)
whose images SWUpdate's delta handler builds from the running slot and the
chunks of a zchunk file, `<sha>.zck`, that its signed sw-description names by
digest. The `.zck` comes first (`add_zck`), then the delta (`add_delta`),
which is refused unless it is what every device of the release can install:
the same version and hardware, signed, every image a delta whose chunks are a
stored `.zck` whose header is the one the `.swu` carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twelvefactor_agent.protocol.names import SHA256_RE, VERSION_RE

from twelvefactor_services.artifact import ArtifactToolError
from twelvefactor_services.artifact.swu import (
    Archive,
    SwuError,
    SwuFile,
    describe,
    read_archive,
)
from twelvefactor_services.artifact.verify import verify
from twelvefactor_services.artifact.zchunk import LEAD_MAX, data_size, header_length


class ArtifactError(ValueError):
    pass


ZCK_URL_RE = re.compile(r"https://[^/]+/artifacts/([0-9a-f]{64})\.zck")


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


@contextmanager
def _faults(src: Path) -> Iterator[None]:
    """Reading `src` as a .swu: what is wrong with it as an ArtifactError."""
    try:
        yield
    except OSError as exc:
        raise ArtifactError(f"{src}: {exc.strerror}") from None
    except SwuError as exc:
        raise ArtifactError(f"{src}: {exc}") from None


@dataclass(frozen=True)
class Artifact:
    sha256: str
    version: str
    hardware: dict[str, list[str]]  # board ("" = any board) -> revisions
    size: int
    added: float
    # {"sha256", "size"} of its delta .swu and {"zck", "zck_size"} of the chunks' file
    delta: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def shas(self) -> tuple[str, ...]:
        """Every file a device fetches for it: the .swu, and the delta's two if any."""
        d = self.delta
        return (self.sha256,) if d is None else (self.sha256, d["sha256"], d["zck"])


class ArtifactStore:
    """``signing_cert``: the certificate devices check signatures with; when given, an
    artifact it does not verify (or whose files do not match sw-description) is refused,
    because every device would refuse it."""

    def __init__(self, root: Path, signing_cert: Path | None = None) -> None:
        self.root = root
        self.signing_cert = signing_cert

    def path(self, sha256: str, suffix: str = ".swu") -> Path:
        if not SHA256_RE.fullmatch(sha256):
            raise ArtifactError(f"invalid artifact id {sha256!r}: 64 lowercase hex digits")
        return self.root / f"{sha256}{suffix}"

    def _check_signed(self, src: Path) -> None:
        """Refuse what the devices would: a signature the signing certificate does not
        verify, or a file sw-description does not match (when the service has one)."""
        if self.signing_cert is None:
            return
        problems = verify(src, self.signing_cert)
        if problems:
            raise ArtifactError(
                f"{src}: devices would refuse it ({self.signing_cert.name}): " + "; ".join(problems)
            )

    def _copy_in(self, src: Path, suffix: str) -> tuple[str, int]:
        """`src` stored as `<sha256><suffix>` (written aside, synced, renamed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".add-")
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            with src.open("rb") as f, os.fdopen(fd, "wb") as out:
                while block := f.read(1 << 20):
                    h.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            sha = h.hexdigest()
            size = tmp.stat().st_size
            tmp.replace(self.path(sha, suffix))
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)

    def _write_record(self, artifact: Artifact) -> None:
        meta = self.root / f".{artifact.sha256}.json.tmp"
        meta.write_text(json.dumps(artifact.to_json(), indent=1) + "\n")
        meta.replace(self.root / f"{artifact.sha256}.json")

    def add_zck(self, sha256: str, src: Path) -> dict[str, Any]:
        """Store the zchunk file a delta of artifact `sha256` will name: {"zck", "zck_size"}."""
        if self.get(sha256) is None:
            raise ArtifactError(f"no artifact {sha256!r}")
        try:
            with src.open("rb") as f:
                header_length(f.read(LEAD_MAX))
        except OSError as exc:
            raise ArtifactError(f"{src}: {exc.strerror}") from None
        except ArtifactToolError as exc:
            raise ArtifactError(f"{src}: {exc}") from None
        sha, size = self._copy_in(src, ".zck")
        pending = self._pending(sha256)
        if sha not in pending:
            with (self.root / f"{sha256}.zcks").open("a") as f:
                f.write(sha + "\n")
        return {"zck": sha, "zck_size": size}

    def _pending(self, sha256: str) -> list[str]:
        """The .zck files uploaded for artifact `sha256` that no delta of it named yet."""
        try:
            lines = (self.root / f"{sha256}.zcks").read_text().split()
        except FileNotFoundError:
            return []
        return [z for z in lines if SHA256_RE.fullmatch(z)]

    def _drop_pending(self, sha256: str, keep: tuple[str, ...] = ()) -> None:
        """Forget the .zck files uploaded for `sha256` but never used (another artifact's
        delta may name the same file: that one stays)."""
        used = {z for a in self.list() for z in a.shas()} | set(keep)
        for zck in self._pending(sha256):
            if zck not in used:
                self.path(zck, ".zck").unlink(missing_ok=True)
        (self.root / f"{sha256}.zcks").unlink(missing_ok=True)

    def add_delta(self, sha256: str, src: Path) -> Artifact:
        """Attach the delta .swu `src` to artifact `sha256` (its .zck stored before)."""
        artifact = self.get(sha256)
        if artifact is None:
            raise ArtifactError(f"no artifact {sha256!r}")
        with _faults(src), src.open("rb") as f:
            info = describe(src)
            archive = read_archive(f)
        found = {board: list(revs) for board, revs in info.hardware.items()}
        if (info.version, found) != (artifact.version, artifact.hardware):
            raise ArtifactError(
                f"{src}: a delta of version {info.version!r} for {found} cannot stand for"
                f" artifact {sha256[:12]} (version {artifact.version!r} for {artifact.hardware})"
            )
        if not info.files or any(f.type != "delta" for f in info.files):
            raise ArtifactError(
                f'{src}: not a delta artifact: every image must be of type "delta"'
                " (twelvefactor-artifact build --delta-url)"
            )
        matches = [ZCK_URL_RE.fullmatch(f.url or "") for f in info.files]
        zcks = {m.group(1) if m else None for m in matches}
        if len(zcks) != 1 or None in zcks:
            urls = sorted({str(f.url) for f in info.files})
            raise ArtifactError(
                f"{src}: its images' url must be one https://HOST[:PORT]/artifacts/<sha256>.zck"
                f" of this service's, not {urls}"
            )
        zck = next(iter(zcks))
        assert zck is not None
        zck_path = self.path(zck, ".zck")
        if not zck_path.exists():
            raise ArtifactError(
                f"{src}: its chunks' file {zck[:12]}.zck is not here: add the .zck first"
            )
        self._same_header(src, archive, info.files, zck_path)
        self._check_signed(src)
        sha, size = self._copy_in(src, ".swu")
        delta = {"sha256": sha, "size": size, "zck": zck, "zck_size": zck_path.stat().st_size}
        old = artifact.delta
        updated = Artifact(**{**artifact.to_json(), "delta": delta})
        self._write_record(updated)
        if old is not None:
            self._drop_delta(old, keep=updated)
        self._drop_pending(sha256)
        return updated

    @staticmethod
    def _same_header(src: Path, archive: Archive, files: Sequence[SwuFile], zck: Path) -> None:
        """The .swu's header must be the stored .zck's: else every device's handler
        fails; a `source-size` must be the size of the file system it indexes."""
        name = files[0].filename
        member = archive.get(name)
        if member is None:
            raise ArtifactError(f"{src}: sw-description names {name!r}, which it does not hold")
        with zck.open("rb") as f:
            try:
                length = header_length(f.read(LEAD_MAX))
            except ArtifactToolError as exc:
                raise ArtifactError(f"{zck.name}: {exc}") from None
            f.seek(0)
            header = f.read(length)
        if (member.size, member.sha256) != (length, hashlib.sha256(header).hexdigest()):
            raise ArtifactError(
                f"{src}: its {name} is not the header of {zck.name}: the chunks would not match"
            )
        try:
            size = str(data_size(header))
        except ArtifactToolError as exc:
            raise ArtifactError(f"{zck.name}: {exc}") from None
        wrong = sorted({str(f.source_size) for f in files} - {"None", size})
        if wrong:
            raise ArtifactError(
                f"{src}: source-size {', '.join(wrong)} is not the {size} bytes its header"
                " indexes: the handler reads that much of the running slot to find its chunks"
            )

    def _drop_delta(self, delta: dict[str, Any], keep: Artifact | None = None) -> None:
        kept = keep.shas() if keep is not None else ()
        if delta["sha256"] not in kept:
            self.path(delta["sha256"]).unlink(missing_ok=True)
        if delta["zck"] not in kept:
            self.path(delta["zck"], ".zck").unlink(missing_ok=True)

    def owner(self, sha256: str) -> Artifact | None:
        """The artifact a file a device asks for belongs to (its .swu, or its delta's)."""
        for artifact in self.list():
            if sha256 in artifact.shas():
                return artifact
        return None

    def served(self, sha256: str, suffix: str) -> Path | None:
        """The file a device may be sent for `<sha256><suffix>`: an artifact's .swu or its
        delta's .swu or .zck; None for anything else."""
        artifact = self.owner(sha256)
        if artifact is None:
            return None
        is_zck = artifact.delta is not None and artifact.delta["zck"] == sha256
        if (suffix == ".zck") != is_zck:
            return None
        path = self.path(sha256, suffix)
        return path if path.exists() else None

    def add(
        self,
        src: Path,
        *,
        version: str | None = None,
        hardware: dict[str, list[str]] | None = None,
    ) -> Artifact:
        """Store `src`; `version`/`hardware`, if given, must agree with its sw-description."""
        with _faults(src):
            info = describe(src)
        found = {board: list(revs) for board, revs in info.hardware.items()}
        if not VERSION_RE.fullmatch(info.version):
            # Every agent refuses a job for such a version (protocol.names.VERSION_RE).
            raise ArtifactError(
                f"{src}: version {info.version!r} is not numbers separated by dots"
                " (at most six, each up to nine digits), which is all a device accepts"
            )
        if not any(revs for revs in found.values()):
            raise ArtifactError(
                f"{src}: sw-description names no hardware revision, so every device refuses it"
            )
        for revs in found.values():
            for rev in revs:
                if rev.startswith("#RE:") and not _compiles(rev[4:]):
                    raise ArtifactError(f"{src}: hardware pattern {rev!r} is not a valid regex")
        self._check_signed(src)
        if any(f.type == "delta" for f in info.files):
            raise ArtifactError(
                f"{src}: a delta artifact installs only beside its release's full one:"
                " add the full .swu, then this as its delta"
            )
        if version is not None and version != info.version:
            raise ArtifactError(
                f"{src}: sw-description says version {info.version!r}, not {version!r}"
            )
        if hardware is not None and hardware != found:
            raise ArtifactError(f"{src}: sw-description says hardware {found}, not {hardware}")
        sha, size = self._copy_in(src, ".swu")
        existing = self.get(sha)
        if existing is not None:
            return existing
        artifact = Artifact(sha, info.version, found, size, time.time())
        self._write_record(artifact)
        return artifact

    def get(self, sha256: str) -> Artifact | None:
        if not SHA256_RE.fullmatch(sha256):
            return None
        try:
            doc = json.loads((self.root / f"{sha256}.json").read_text())
        except FileNotFoundError:
            return None
        if not self.path(sha256).exists():
            return None
        return Artifact(**doc)

    def signature(self, sha256: str) -> dict[str, Any]:
        """The stored artifact checked again against the signing certificate, as the operator
        API shows it: ``{"status": "verified" | "refused" | "not_checked", "certificate",
        "problems"}``; "not_checked" when the service has no signing certificate."""
        if self.signing_cert is None:
            return {"status": "not_checked", "certificate": None, "problems": []}
        try:
            problems = verify(self.path(sha256), self.signing_cert)
        except ArtifactToolError as exc:  # the certificate is gone since the service started
            problems = [str(exc)]
        return {
            "status": "refused" if problems else "verified",
            "certificate": self.signing_cert.name,
            "problems": [p.replace(str(self.root) + "/", "") for p in problems],
        }

    def remove(self, sha256: str) -> bool:
        """Forget the artifact: its record first (so it is no longer listed), then its bytes.
        False if there was none. Whether anything still uses it is the caller's question."""
        path = self.path(sha256)
        meta = self.root / f"{sha256}.json"
        if not meta.exists() and not path.exists():
            return False
        found = self.get(sha256)
        meta.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        if found is not None and found.delta is not None:
            self._drop_delta(found.delta)
        self._drop_pending(sha256)
        return True

    def list(self) -> list[Artifact]:
        if not self.root.is_dir():
            return []
        found = (self.get(p.stem) for p in sorted(self.root.glob("*.json")))
        return sorted((a for a in found if a is not None), key=lambda a: a.added)
