"""One TLS context per endpoint and identity, kept while its files stay the same (issue 18):
a session is resumed only through the context that made it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from twelvefactor_agent.config import settings
from twelvefactor_agent.session.mqtt import shared_tls_context
from twelvefactor_services.pki import Pki

pytestmark = pytest.mark.unit


def test_the_context_is_shared_until_an_identity_file_changes(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    pki.init()
    ident = pki.device("dev-1")
    files = tmp_path / "identity"
    files.mkdir()
    for name, src in (("device.crt", ident.cert), ("device.key", ident.key), ("ca.crt", ident.ca)):
        shutil.copy(src, files / name)
    config = settings.validate(
        {
            "device": {
                "id": "dev-1",
                "certificate": str(files / "device.crt"),
                "key": str(files / "device.key"),
                "ca": str(files / "ca.crt"),
            },
            "management": {"host": "10.77.0.1"},
            "solution": {"host": "10.77.0.1"},
        }
    )
    first = shared_tls_context(config, config.management)
    assert shared_tls_context(config, config.management) is first
    assert shared_tls_context(config, config.solution) is not first  # another endpoint
    stat = (files / "device.crt").stat()
    os.utime(files / "device.crt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # renewed
    assert shared_tls_context(config, config.management) is not first
