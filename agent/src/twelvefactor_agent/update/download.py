"""Resumable artifact download over HTTPS with the device's client certificate.

One call is one attempt: it continues a partial file on /data from its size
with `Range: bytes=N-`, appends and fsyncs as it goes (a power cut keeps what
was written), and checks the sha256 over the whole file at the end. A link
that drops raises `DownloadInterrupted` and leaves the partial file for the
next attempt; a file whose digest is wrong is deleted and refused. The server
certificate is checked against the provisioned CA *and* the host name.
Name the partial file after the artifact's sha256, so that a partial file is
only ever continued with the bytes of the same artifact.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

CHUNK = 64 * 1024
SYNC_EVERY = 1024 * 1024  # bytes between fsyncs: bounds what a power cut can lose
CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

Progress = Callable[[int, int], None]  # (bytes on disk, total)


class DownloadError(Exception):
    """The artifact cannot be had from this attempt, and retrying will not help as is."""


class DownloadInterrupted(DownloadError):
    """The transfer stopped early (link, timeout, server): retry; the partial file stays."""


class ChecksumError(DownloadError):
    """The complete file does not have the announced sha256; it was deleted."""


class ClientIdentity(NamedTuple):
    cert: Path
    key: Path
    ca: Path


def tls_context(identity: ClientIdentity) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(identity.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(identity.cert), str(identity.key))
    return ctx  # check_hostname and CERT_REQUIRED are the defaults


def _digest_of(path: Path) -> tuple[hashlib._Hash, int]:
    h = hashlib.sha256()
    n = 0
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            n += len(block)
    return h, n


def download(
    url: str,
    dest: Path,
    *,
    sha256: str,
    size: int,
    identity: ClientIdentity,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> Path:
    """Fetch `url` into `dest` (continuing it if present); return `dest` once verified."""
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.hostname is None:
        raise DownloadError(f"refusing a non-https URL: {url!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    h, have = _digest_of(dest) if dest.exists() else (hashlib.sha256(), 0)
    if have > size:  # not ours, or a different artifact: start over
        dest.unlink()
        h, have = hashlib.sha256(), 0
    if have < size:
        have, h = _transfer(url, dest, h, have, size, identity, progress, timeout)
    if have != size:
        raise DownloadInterrupted(f"{have} of {size} bytes")
    if h.hexdigest() != sha256:
        dest.unlink(missing_ok=True)
        raise ChecksumError(f"sha256 {h.hexdigest()} is not the announced {sha256}; deleted")
    return dest


def _transfer(
    url: str,
    dest: Path,
    h: hashlib._Hash,
    have: int,
    size: int,
    identity: ClientIdentity,
    progress: Progress | None,
    timeout: float,
) -> tuple[int, hashlib._Hash]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPSConnection(
        parts.hostname, parts.port or 443, timeout=timeout, context=tls_context(identity)
    )
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
        except ssl.SSLCertVerificationError as exc:
            raise DownloadError(f"server certificate refused: {exc.verify_message}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadInterrupted(f"request failed: {exc}") from None
        if resp.status == 206:
            m = CONTENT_RANGE_RE.fullmatch(resp.getheader("Content-Range", ""))
            if m is None or int(m.group(1)) != have:
                raise DownloadError(f"bad Content-Range {resp.getheader('Content-Range')!r}")
            mode = "ab"
        elif resp.status == 200:
            # the server ignored the range and sends all of it: start the file and digest over
            h, have, mode = hashlib.sha256(), 0, "wb"
        else:
            raise DownloadError(f"HTTP {resp.status} {resp.reason} for {url}")
        unsynced = 0
        with dest.open(mode) as f:
            try:
                while have < size:
                    block = resp.read(min(CHUNK, size - have))
                    if not block:
                        break
                    f.write(block)
                    h.update(block)
                    have += len(block)
                    unsynced += len(block)
                    if unsynced >= SYNC_EVERY:
                        f.flush()
                        os.fsync(f.fileno())
                        unsynced = 0
                    if progress is not None:
                        progress(have, size)
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadInterrupted(f"transfer stopped at {have} of {size}: {exc}") from None
            finally:
                f.flush()
                os.fsync(f.fileno())
        return have, h
    finally:
        conn.close()
