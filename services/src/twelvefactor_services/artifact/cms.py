"""The CMS signature over sw-description, made and checked with the `openssl` command.

meta-swupdate signs with `openssl cms -sign` too, and the layer's SWUpdate
(`CONFIG_SSL_IMPL_OPENSSL`, `CONFIG_SIGALG_CMS`) checks with OpenSSL's
`CMS_verify`: the same code on both sides, so what `check_signature`
accepts, the device accepts. Its checks are SWUpdate's defaults: the
signer's certificate chains to the given one, is valid now, and may sign
S/MIME (key usage digitalSignature, extended key usage emailProtection when
present: SWUpdate's default certificate purpose). Debian's SWUpdate in the
reference image checks with wolfSSL's PKCS#7 code instead and accepts the
same signatures (tests/boot/test_artifact_swupdate.py). The `cryptography`
package can sign CMS but not verify it, and one tool for both keeps the two
halves in step.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from twelvefactor_services.artifact import ArtifactToolError


@dataclass(frozen=True)
class Signer:
    key: Path  # PEM private key
    cert: Path  # PEM certificate the devices trust (SWUpdate's -k)


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ArtifactToolError(f"{name} is not installed (Debian package {package})")
    return path


def run(argv: Sequence[str | Path], what: str) -> bytes:
    """stdout of a command; ArtifactToolError with its stderr when it fails."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, check=False)
    if done.returncode != 0:
        err = (done.stderr or done.stdout).decode(errors="replace").strip()[-2000:]
        raise ArtifactToolError(f"{what} failed ({done.returncode}): {err}")
    return done.stdout


def _readable(path: Path, what: str) -> None:
    if not path.is_file():
        raise ArtifactToolError(f"{what} {path}: no such file")


def sign(text: bytes, signer: Signer) -> bytes:
    """The detached CMS signature (DER) over the sw-description `text`."""
    _readable(signer.key, "signing key")
    _readable(signer.cert, "certificate")
    openssl = tool("openssl", "openssl")
    with tempfile.TemporaryDirectory(prefix="twelvefactor-sign-") as tmp:
        content = Path(tmp) / "sw-description"
        content.write_bytes(text)
        return run(
            [
                openssl,
                "cms",
                "-sign",
                "-in",
                content,
                "-signer",
                signer.cert,
                "-inkey",
                signer.key,
                "-outform",
                "DER",
                "-nosmimecap",
                "-binary",
            ],
            f"signing with {signer.key} and {signer.cert} (openssl cms -sign)",
        )


def check_signature(
    text: bytes, signature: bytes, cert: Path, *, partial_chain: bool = False
) -> str | None:
    """None if `signature` is a valid CMS signature over `text` by `cert` or a
    certificate it issued; else openssl's reason.

    `partial_chain`: `cert` may be a certificate issued by a CA (the build checks
    against the signing certificate itself, which a device trusts through its CA).
    """
    _readable(cert, "certificate")
    openssl = tool("openssl", "openssl")
    with tempfile.TemporaryDirectory(prefix="twelvefactor-verify-") as tmp:
        content, sig = Path(tmp) / "sw-description", Path(tmp) / "sw-description.sig"
        content.write_bytes(text)
        sig.write_bytes(signature)
        argv = [
            openssl,
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            str(sig),
            "-content",
            str(content),
            "-binary",
            "-CAfile",
            str(cert),
            "-out",
            "/dev/null",
        ]
        if partial_chain:
            argv.append("-partial_chain")
        done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode == 0:
        return None
    lines = [ln.strip() for ln in done.stderr.decode(errors="replace").splitlines() if ln.strip()]
    return "; ".join(_reason(ln) for ln in lines)[:500] or f"openssl exit {done.returncode}"


def _reason(line: str) -> str:
    """The readable part of an OpenSSL 3 error line
    (`PID:error:CODE:LIBRARY:FUNCTION:REASON:FILE:LINE:DATA`)."""
    parts = line.split(":")
    if len(parts) >= 9 and parts[1] == "error":
        data = ":".join(parts[8:]).strip()
        return parts[5] + (f" ({data})" if data else "")
    return line
