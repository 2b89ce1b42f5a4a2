"""The management service's `.swu` store: one file per artifact, named by its sha256.

`<dir>/<sha256>.swu` holds the bytes and `<dir>/<sha256>.json` what we know of
them (version, hardware compatibility from the sw-description, size, when it
was added). Both are written to a temporary name and renamed, so a reader
never sees half an artifact. Adding the same file twice gives the same
artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twelvefactor_agent.protocol.names import SHA256_RE, VERSION_RE

from twelvefactor_services.artifact import ArtifactToolError
from twelvefactor_services.artifact.swu import SwuError, describe
from twelvefactor_services.artifact.verify import verify


class ArtifactError(ValueError):
    pass


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


@dataclass(frozen=True)
class Artifact:
    sha256: str
    version: str
    hardware: dict[str, list[str]]  # board ("" = any board) -> revisions
    size: int
    added: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ArtifactStore:
    """``signing_cert``: the certificate devices check signatures with; when given, an
    artifact it does not verify (or whose files do not match sw-description) is refused,
    because every device would refuse it."""

    def __init__(self, root: Path, signing_cert: Path | None = None) -> None:
        self.root = root
        self.signing_cert = signing_cert

    def path(self, sha256: str) -> Path:
        if not SHA256_RE.fullmatch(sha256):
            raise ArtifactError(f"invalid artifact id {sha256!r}: 64 lowercase hex digits")
        return self.root / f"{sha256}.swu"

    def add(
        self,
        src: Path,
        *,
        version: str | None = None,
        hardware: dict[str, list[str]] | None = None,
    ) -> Artifact:
        """Store `src`; `version`/`hardware`, if given, must agree with its sw-description."""
        try:
            info = describe(src)
        except OSError as exc:
            raise ArtifactError(f"{src}: {exc.strerror}") from None
        except SwuError as exc:
            raise ArtifactError(f"{src}: {exc}") from None
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
        if self.signing_cert is not None:
            problems = verify(src, self.signing_cert)
            if problems:
                raise ArtifactError(
                    f"{src}: devices would refuse it ({self.signing_cert.name}): "
                    + "; ".join(problems)
                )
        if version is not None and version != info.version:
            raise ArtifactError(
                f"{src}: sw-description says version {info.version!r}, not {version!r}"
            )
        if hardware is not None and hardware != found:
            raise ArtifactError(f"{src}: sw-description says hardware {found}, not {hardware}")
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
            existing = self.get(sha)
            if existing is not None:
                return existing
            artifact = Artifact(sha, info.version, found, tmp.stat().st_size, time.time())
            tmp.replace(self.path(sha))
            meta = self.root / f".{sha}.json.tmp"
            meta.write_text(json.dumps(artifact.to_json(), indent=1) + "\n")
            meta.replace(self.root / f"{sha}.json")
            return artifact
        finally:
            tmp.unlink(missing_ok=True)

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
        meta.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        return True

    def list(self) -> list[Artifact]:
        if not self.root.is_dir():
            return []
        found = (self.get(p.stem) for p in sorted(self.root.glob("*.json")))
        return sorted((a for a in found if a is not None), key=lambda a: a.added)
