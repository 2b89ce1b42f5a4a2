"""What a `.swu` holds: version, hardware, files with sizes and digests, signature, compression.

The archive is read with the management service's reader
(`artifact.swu.read_archive`: every member streamed through sha256, the
"crc" checksums checked) and sw-description with its parser. Nothing is
judged here beyond what the reader refuses; `verify` judges.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twelvefactor_services.artifact import ArtifactToolError
from twelvefactor_services.artifact.swu import (
    DESCRIPTION,
    SIGNATURE,
    Archive,
    SwuError,
    SwuFile,
    SwuInfo,
    parse_description,
    read_archive,
)


@dataclass(frozen=True)
class FileReport:
    name: str
    size: int
    sha256: str
    # the sw-description entries naming this file (an A/B description names its image twice)
    entries: tuple[SwuFile, ...]

    @property
    def described_sha256(self) -> tuple[str | None, ...]:
        return tuple(dict.fromkeys(e.sha256 for e in self.entries))

    @property
    def compression(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.compressed or "none" for e in self.entries))


@dataclass(frozen=True)
class Inspection:
    path: Path
    size: int
    archive: Archive
    info: SwuInfo
    files: tuple[FileReport, ...]  # every member, in archive order
    missing: tuple[str, ...]  # named by sw-description, not in the archive

    @property
    def signed(self) -> bool:
        return self.archive.get(SIGNATURE) is not None

    @property
    def compression(self) -> str:
        """The named files' compression: one method, or the distinct ones joined."""
        methods = dict.fromkeys(e.compressed or "none" for e in self.info.files)
        return ", ".join(methods) or "none"


def inspect(path: Path) -> Inspection:
    try:
        with path.open("rb") as f:
            archive = read_archive(f)
        size = path.stat().st_size
    except OSError as exc:
        raise ArtifactToolError(f"{path}: {exc.strerror}") from None
    except SwuError as exc:
        raise ArtifactToolError(f"{path}: {exc}") from None
    text = archive.members[0].data
    assert text is not None  # the reader keeps sw-description, which comes first
    try:
        info = parse_description(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ArtifactToolError(f"{path}: sw-description is not UTF-8") from None
    except SwuError as exc:
        raise ArtifactToolError(f"{path}: {exc}") from None
    files = tuple(
        FileReport(m.name, m.size, m.sha256, tuple(e for e in info.files if e.filename == m.name))
        for m in archive.members
    )
    named = dict.fromkeys(e.filename for e in info.files)
    missing = tuple(n for n in named if archive.get(n) is None)
    return Inspection(path, size, archive, info, files, missing)


def role(report: FileReport) -> str:
    if report.name == DESCRIPTION:
        return "description"
    if report.name == SIGNATURE:
        return "signature"
    return report.entries[0].section.rstrip("s") if report.entries else "not in sw-description"


def as_json(i: Inspection) -> dict[str, Any]:
    return {
        "file": str(i.path),
        "size": i.size,
        "version": i.info.version,
        "hardware": {board: list(revs) for board, revs in i.info.hardware.items()},
        "signed": i.signed,
        "compression": i.compression,
        "cpio": "newc crc" if i.archive.crc else "newc",
        "files": [
            {
                "name": f.name,
                "size": f.size,
                "sha256": f.sha256,
                "role": role(f),
                **(
                    {
                        "sha256_in_description": list(f.described_sha256),
                        "compression": list(f.compression),
                    }
                    if f.entries
                    else {}
                ),
            }
            for f in i.files
        ],
        "missing": list(i.missing),
    }


def as_text(i: Inspection) -> str:
    hardware = "; ".join(
        f"{board or '(any board)'} {', '.join(revs)}" for board, revs in i.info.hardware.items()
    )
    lines = [
        f"file         {i.path} ({i.size} bytes, cpio {'newc crc' if i.archive.crc else 'newc'})",
        f"version      {i.info.version}",
        f"hardware     {hardware}",
        f"signed       {'yes (' + SIGNATURE + '; verify --cert checks it)' if i.signed else 'no'}",
        f"compression  {i.compression}",
        "files",
    ]
    width = max(len(f.name) for f in i.files)
    for f in i.files:
        what = role(f)
        if f.entries:
            what += ", " + ", ".join(f.compression)
        lines.append(f"  {f.name:<{width}}  {f.size:>12} bytes  {what}")
        digest = f"      sha256 {f.sha256}"
        if f.entries:
            said = [d or "none" for d in f.described_sha256]
            if said == [f.sha256]:
                digest += " (as in sw-description)"
            else:
                digest += f" (sw-description says {', '.join(said)})"
        lines.append(digest)
    for name in i.missing:
        lines.append(f"  {name}: named by sw-description, NOT in the archive")
    return "\n".join(lines)


def dumps(i: Inspection) -> str:
    return json.dumps(as_json(i), indent=1)
