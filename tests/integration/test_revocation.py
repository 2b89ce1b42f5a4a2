"""A revoked device certificate: the broker drops the device at once and refuses it after.

The PKI revokes the certificate (crl.pem), the new CRL is put in the
broker's folder and the broker is sent SIGHUP, as `twelvefactor-hub
decommission` and the running hub do. The identity plugin then reads it
again, disconnects the device's connected sessions (their will is published)
and refuses its CONNECTs, and mosquitto's own `crlfile` refuses its TLS
handshake. Another device is untouched throughout.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_broker_acl import _connects, _tls_alert

from testbed.pace import PACE, ROUND_TRIP
from testbed.probe import Probe
from testbed.stack import Stack

pytestmark = pytest.mark.integration

# A revoked device is kicked at once: within a round trip's limit (testbed/pace.py).


def test_a_revoked_device_is_disconnected_at_once_and_refused_after(stack: Stack) -> None:
    gone, stays = stack.device("dev-gone"), stack.device("dev-stays")
    # A service watches the will of the device that is revoked.
    watcher = Probe(stack.service_endpoint, stack.service_identity("management"), "management-9")
    watcher.connect()
    watcher.subscribe("mgmt/dev-gone/up/online")
    sessions = []
    for endpoint, suffix in ((stack.management_endpoint, "mgmt"), (stack.solution_endpoint, "sol")):
        will = ("mgmt/dev-gone/up/online", b'{"v": 1, "online": false}', False)
        probe = Probe(endpoint, gone, f"dev-gone-{suffix}", will=will if suffix == "mgmt" else None)
        probe.connect()
        sessions.append(probe)
    other = Probe(stack.management_endpoint, stays, "dev-stays-mgmt")
    other.connect()
    try:
        serial = stack.pki.revoke("dev-gone")
        stack.pki.install_crl(stack.credentials["broker"].folder)
        stack.broker.reload()
        deadline = time.monotonic() + PACE.limit(ROUND_TRIP)
        for probe in sessions:
            assert probe._disconnected.wait(max(0.0, deadline - time.monotonic())), (
                "a revoked device is still connected"
            )
        assert (
            watcher.wait_for(timeout=PACE.limit(ROUND_TRIP)).json()["online"] is False
        )  # its will
        summary = "1 revoked certificates; disconnected the 1 devices"
        deadline = time.monotonic() + PACE.limit(ROUND_TRIP)  # the plugin logs it after the kick
        while summary not in (log := stack.broker.log_tail(200)):
            assert time.monotonic() < deadline, log
            time.sleep(0.1)

        # a new connection: the broker's own TLS check refuses the handshake
        for endpoint in (stack.management_endpoint, stack.solution_endpoint):
            assert (
                _tls_alert(endpoint, stack.pki.ca_cert, gone) == "SSLV3_ALERT_CERTIFICATE_REVOKED"
            )
        assert serial in stack.pki.revoked()

        # the other device: its session stays up, and it connects again as before
        other.publish("mgmt/dev-stays/up/online", {"v": 1, "online": True})
        _connects(stack.solution_endpoint, stays, "dev-stays-sol")
    finally:
        for probe in (*sessions, other, watcher):
            probe.kill()


def test_a_crl_not_signed_by_the_device_ca_is_ignored(stack: Stack, tmp_path: Path) -> None:
    from twelvefactor_services.pki import Pki

    rogue = Pki(tmp_path / "rogue")
    rogue.init()
    rogue.write_crl()
    a = stack.device("dev-a")
    probe = Probe(stack.management_endpoint, a, "dev-a-mgmt")
    probe.connect()
    stack.credentials["broker"].crl.write_bytes(rogue.crl.read_bytes())
    stack.broker.reload()
    deadline = time.monotonic() + PACE.limit(ROUND_TRIP)
    while "is not a CRL signed by the device CA: ignored" not in stack.broker.log_tail(50):
        assert time.monotonic() < deadline, stack.broker.log_tail(50)
        time.sleep(0.2)
    assert not probe._disconnected.is_set()
    probe.kill()
