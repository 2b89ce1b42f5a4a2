"""Is a `.swu` what SWUpdate will install: signed by the certificate, every file as described.

The checks, each failure one line naming the file and the check:
- archive: readable as SWUpdate reads it (`inspect`; cpio checksums);
- version: one the agent accepts (protocol.names.VERSION_RE);
- signature: `sw-description.sig` present, right after sw-description, and a
  valid CMS signature over it by the certificate (or one it issued);
- every file sw-description names: in the archive, with a sha256 in
  sw-description (SWUpdate refuses a signed image without one) that equals
  the file's;
- every other member: none (a file nothing describes is nothing the
  signature covers).
The signature covers sw-description only; the digests in it cover the files,
so both checks together are what makes the artifact trustworthy.
"""

from __future__ import annotations

from pathlib import Path

from twelvefactor_agent.protocol.names import VERSION_RE

from twelvefactor_services.artifact import ArtifactToolError
from twelvefactor_services.artifact.cms import check_signature
from twelvefactor_services.artifact.inspect import Inspection, inspect
from twelvefactor_services.artifact.swu import DESCRIPTION, SIGNATURE


def verify(path: Path, cert: Path) -> list[str]:
    """The problems of the .swu at `path` checked against `cert`; empty if it is good."""
    if not cert.is_file():
        raise ArtifactToolError(f"certificate {cert}: no such file")
    try:
        found = inspect(path)
    except ArtifactToolError as exc:
        return [f"archive: {exc}"]
    return problems(found, cert)


def problems(found: Inspection, cert: Path) -> list[str]:
    out: list[str] = []
    version = found.info.version
    if not VERSION_RE.fullmatch(version):
        out.append(
            f"{DESCRIPTION}: version {version!r} is not numbers separated by dots;"
            " every device refuses it"
        )
    names = [m.name for m in found.archive.members]
    desc = found.archive.members[0]
    sig = found.archive.get(SIGNATURE)
    if sig is None:
        out.append(f"signature: unsigned (no {SIGNATURE} in the archive)")
    elif names.index(SIGNATURE) != 1:
        out.append(
            f"signature: {SIGNATURE} is member {names.index(SIGNATURE) + 1};"
            f" SWUpdate reads it right after {DESCRIPTION}"
        )
    elif sig.data is None:
        out.append(f"signature: {SIGNATURE} is {sig.size} bytes, far more than a signature")
    else:
        assert desc.data is not None  # the reader keeps sw-description
        problem = check_signature(desc.data, sig.data, cert)
        if problem is not None:
            out.append(f"signature: does not verify against {cert}: {problem}")
    for f in found.files:
        if f.name in (DESCRIPTION, SIGNATURE):
            continue
        if not f.entries:
            out.append(
                f"{f.name}: in the archive but not named by {DESCRIPTION}"
                " (the signature does not cover it)"
            )
            continue
        for said in f.described_sha256:
            if said is None:
                out.append(f"{f.name}: {DESCRIPTION} gives no sha256 for it")
            elif said != f.sha256:
                out.append(f"{f.name}: sha256 is {f.sha256}, {DESCRIPTION} says {said}")
    for name in found.missing:
        out.append(f"{name}: named by {DESCRIPTION} but not in the archive")
    return out
