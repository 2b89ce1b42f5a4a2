"""Fixtures for the integration tier: a PKI, a running broker, running services.

The fixtures are thin: the work is done by plain classes in
``twelvefactor_services.launcher`` so the end-to-end tests and the demo reuse
them. A missing host tool (mosquitto, openssl) fails the test, never skips it.
"""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.fail(
            "this test needs 'openssl' (a Debian package): run scripts/setup", pytrace=False
        )
    return path
