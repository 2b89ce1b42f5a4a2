"""The broker's identity and ACL rules, tried from the attacker's side with real clients."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from twelvefactor_agent.protocol.envelope import MAX_MESSAGE
from twelvefactor_agent.protocol.topics import MANAGEMENT_UP, SOLUTION_DATA_UP
from twelvefactor_services.broker import (
    MAX_PACKET,
    BrokerConfig,
    BrokerError,
    BrokerTls,
    render_config,
)
from twelvefactor_services.mqtt import Endpoint, Identity
from twelvefactor_services.pki import Pki, Validity
from twelvefactor_services.solution.receivers import read_archive
from twelvefactor_services.topics import share_group, shared

from testbed.pace import PACE, ROUND_TRIP
from testbed.probe import Probe, ProbeError
from testbed.stack import Stack, wait_until

MakeProbe = Callable[..., Probe]
QUIET = 2.0  # seconds of silence taken as "nothing more is coming"
UNKNOWN_CA = "TLSV1_ALERT_UNKNOWN_CA"
TLS_ALERT_RECORD = 0x15


def _group(stack: Stack, service: str) -> str:
    return share_group(service, stack.service_identity(service).key)


def _mgmt_service(stack: Stack, probes: MakeProbe, cid: str = "management-1") -> Probe:
    p = probes(stack.service_endpoint, stack.service_identity("management"), cid)
    assert not p.subscribe(shared(_group(stack, "management"), MANAGEMENT_UP)).is_failure
    return p


def test_device_uses_its_own_topics_both_ways(stack: Stack, probes: MakeProbe) -> None:
    service = _mgmt_service(stack, probes)
    dev = probes(stack.management_endpoint, stack.device("dev-a"), "dev-a-mgmt")
    assert not dev.subscribe("mgmt/dev-a/down/#").is_failure
    dev.publish("mgmt/dev-a/up/health", b'{"v":1}')
    got = service.wait_for()
    assert got.topic == "mgmt/dev-a/up/health"
    service.publish("mgmt/dev-a/down/config", b"{}")
    assert dev.wait_for().topic == "mgmt/dev-a/down/config"


def test_device_cannot_publish_into_another_devices_topics(stack: Stack, probes: MakeProbe) -> None:
    service = _mgmt_service(stack, probes)
    a = probes(stack.management_endpoint, stack.device("dev-a"), "dev-a-mgmt")
    a.publish("mgmt/dev-b/up/online", b'{"v":1,"online":false}', retain=True)
    a.publish("mgmt/dev-b/up/health", b'{"v":1}')
    a.publish("mgmt/dev-a/down/x", b"{}")  # its own, but the wrong direction
    a.publish("sol/dev-a/up/data/s", b"{}")  # solution topics on the management listener
    a.publish("mgmt/dev-a/up/health", b'{"v":1,"marker":true}')
    # Messages from one client arrive in order: once the marker is here, the rest were dropped.
    first = service.wait_for()
    assert first.topic == "mgmt/dev-a/up/health"
    assert service.drain(QUIET) == []


def test_device_receives_nothing_of_another_device(stack: Stack, probes: MakeProbe) -> None:
    b = probes(stack.management_endpoint, stack.device("dev-b"), "dev-b-mgmt")
    assert not b.subscribe("mgmt/dev-b/down/#").is_failure
    b.publish("mgmt/dev-b/up/online", b'{"v":1,"online":true}', retain=True)
    a = probes(stack.management_endpoint, stack.device("dev-a"), "dev-a-mgmt")
    # mosquitto 2.0.11 grants any subscription and filters on delivery: whatever the
    # reason code, nothing of dev-b's may arrive, live or retained.
    for pattern in ("mgmt/dev-b/down/#", "mgmt/dev-b/up/#", "#", "mgmt/+/up/#"):
        a.subscribe(pattern)
    service = _mgmt_service(stack, probes)
    service.publish("mgmt/dev-b/down/config", b'{"secret":1}')
    assert b.wait_for().topic == "mgmt/dev-b/down/config"  # it was delivered, to dev-b
    assert a.drain(QUIET) == []


def test_device_cannot_join_the_services_shared_group(stack: Stack, probes: MakeProbe) -> None:
    """A device in the group would make the broker drop every message routed to it."""
    service = _mgmt_service(stack, probes)
    thief = probes(stack.management_endpoint, stack.device("dev-a"), "dev-a-mgmt")
    # It knows the filters and the documented service names, not the secret group.
    for group in ("management", "solution", "twelvefactor", "management-1"):
        thief.subscribe(shared(group, MANAGEMENT_UP))
    thief_sol = probes(stack.solution_endpoint, stack.device("dev-a"), "dev-a-sol")
    thief_sol.subscribe(shared("management", MANAGEMENT_UP))
    b = probes(stack.management_endpoint, stack.device("dev-b"), "dev-b-mgmt")
    for i in range(20):
        b.publish("mgmt/dev-b/up/health", f'{{"v":1,"i":{i}}}'.encode())
    got = [service.wait_for().json()["i"] for _ in range(20)]
    assert got == list(range(20))
    assert thief.drain(0.5) == [] and thief_sol.drain(0.5) == []


def test_services_read_only_what_they_consume(stack: Stack, probes: MakeProbe) -> None:
    mgmt = probes(stack.service_endpoint, stack.service_identity("management"), "management-1")
    sol = probes(stack.service_endpoint, stack.service_identity("solution"), "solution-1")
    for p in (mgmt, sol):
        p.subscribe("#")
    dev_m = probes(stack.management_endpoint, stack.device("dev-a"), "dev-a-mgmt")
    dev_s = probes(stack.solution_endpoint, stack.device("dev-a"), "dev-a-sol")
    dev_s.subscribe("sol/dev-a/down/#")
    dev_m.publish("mgmt/dev-a/up/health", b'{"v":1}')
    dev_s.publish("sol/dev-a/up/data/t", b'{"v":1}')
    assert [m.topic for m in mgmt.drain(QUIET)] == ["mgmt/dev-a/up/health"]
    assert [m.topic for m in sol.drain(0.5)] == ["sol/dev-a/up/data/t"]
    # Writing: management may not talk on the solution side, nor fake device uploads.
    mgmt.publish("sol/dev-a/down/x", b"{}")
    mgmt.publish("mgmt/dev-a/up/online", b'{"v":1,"online":false}')
    sol.publish("sol/dev-a/up/data/t", b"{}")
    sol.publish("sol/dev-a/down/ok", b"{}")
    assert [m.topic for m in dev_s.drain(QUIET)] == ["sol/dev-a/down/ok"]
    assert mgmt.drain(0.5) == [] and sol.drain(0.5) == []


def _connects(endpoint: Endpoint, identity: Identity, client_id: str) -> None:
    """Positive control: the listener is up and takes a good certificate (CONNACK 0)."""
    probe = Probe(endpoint, identity, client_id)
    assert probe.connect().value == 0
    probe.disconnect()


def _tls_alert(endpoint: Endpoint, ca: Path, identity: Identity | None) -> str:
    """The TLS alert a listener ends the handshake with, by OpenSSL's name.

    Nothing is sent: under TLS 1.3 the server checks the client's certificate
    after the client has finished its part of the handshake, so the refusal is
    the answer to the first read. A refused connection, a timeout or a close
    without an alert is no refusal by certificate and fails the test."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    if identity is not None:
        ctx.load_cert_chain(str(identity.cert), str(identity.key))
    # A refusal comes within milliseconds on loopback; the limit only bounds a broker that hangs.
    limit = PACE.limit(ROUND_TRIP)
    try:
        with (
            socket.create_connection((endpoint.host, endpoint.port), timeout=limit) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            data = tls.recv(1)
    except ssl.SSLError as exc:
        return str(exc.reason)
    except TimeoutError:
        pytest.fail(f"{endpoint}: no TLS alert within {limit:.0f} s, the handshake was taken")
    pytest.fail(f"{endpoint}: no TLS alert, the first read gave {data!r}")


def test_certificates_are_bound_to_their_listener(stack: Stack) -> None:
    _connects(stack.management_endpoint, stack.device("dev-a"), "dev-a-mgmt")
    _connects(stack.service_endpoint, stack.service_identity("management"), "management-1")
    ca = stack.pki.ca_cert
    service_on_device_listener = stack.service_identity("management")
    assert _tls_alert(stack.management_endpoint, ca, service_on_device_listener) == UNKNOWN_CA
    assert _tls_alert(stack.service_endpoint, ca, stack.device("dev-a")) == UNKNOWN_CA


def test_certificate_from_another_ca_is_refused(stack: Stack, tmp_path: Path) -> None:
    rogue = Pki(tmp_path / "rogue")
    rogue.init()
    paths = rogue.device("dev-a")
    # It trusts our broker's CA but its own certificate comes from elsewhere.
    identity = Identity(paths.cert, paths.key, stack.pki.ca_cert)
    for endpoint, client_id in (
        (stack.management_endpoint, "dev-a-mgmt"),
        (stack.solution_endpoint, "dev-a-sol"),
    ):
        _connects(endpoint, stack.device("dev-a"), client_id)
        assert _tls_alert(endpoint, stack.pki.ca_cert, identity) == UNKNOWN_CA


def test_expired_certificate_is_refused(stack: Stack) -> None:
    _connects(stack.management_endpoint, stack.device("dev-a"), "dev-a-mgmt")
    now = dt.datetime.now(dt.UTC)
    expired = stack.device("dev-old", Validity(now - dt.timedelta(days=30), now - dt.timedelta(1)))
    endpoint, ca = stack.management_endpoint, stack.pki.ca_cert
    assert _tls_alert(endpoint, ca, expired) == "SSLV3_ALERT_CERTIFICATE_EXPIRED"
    future = stack.device("dev-new", Validity(now + dt.timedelta(days=1), now + dt.timedelta(9)))
    # OpenSSL's alert for "not yet valid" is bad_certificate (there is no closer one)
    assert _tls_alert(endpoint, ca, future) == "SSLV3_ALERT_BAD_CERTIFICATE"


# An MQTT 5 CONNECT (clean start, keepalive 5 s, client id "x"), sent in the clear.
PLAIN_CONNECT_BODY = b"\x00\x04MQTT\x05\x02\x00\x05\x00\x00\x01x"
PLAIN_CONNECT = bytes([0x10, len(PLAIN_CONNECT_BODY)]) + PLAIN_CONNECT_BODY


def _plain_mqtt(endpoint: Endpoint) -> bytes:
    """What a listener sends a plain-MQTT client before it closes the connection.
    A connection still open after a round trip's limit (testbed/pace.py) fails the test: no
    answer is no refusal."""
    got = b""
    limit = PACE.limit(ROUND_TRIP)
    with socket.create_connection((endpoint.host, endpoint.port), timeout=limit) as raw:
        raw.sendall(PLAIN_CONNECT)
        try:
            while chunk := raw.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"{endpoint}: a plain CONNECT left open {limit:.0f} s, got {got!r}")
    return got


def test_no_certificate_and_plain_tcp_are_refused(stack: Stack) -> None:
    listeners = (
        (stack.management_endpoint, stack.device("dev-a"), "dev-a-mgmt"),
        (stack.solution_endpoint, stack.device("dev-a"), "dev-a-sol"),
        (stack.service_endpoint, stack.service_identity("solution"), "solution-1"),
    )
    for endpoint, identity, client_id in listeners:
        _connects(endpoint, identity, client_id)
        # Plain MQTT on a TLS port: closed with nothing, or a TLS alert; never a CONNACK.
        answer = _plain_mqtt(endpoint)
        assert answer == b"" or answer[0] == TLS_ALERT_RECORD, answer
        # TLS without a client certificate: TLS 1.3's certificate_required alert.
        alert = _tls_alert(endpoint, stack.pki.ca_cert, None)
        assert alert == "TLSV13_ALERT_CERTIFICATE_REQUIRED"


def test_retained_messages_and_sessions_survive_a_broker_restart(
    stack: Stack, probes: MakeProbe
) -> None:
    dev = probes(
        stack.management_endpoint,
        stack.device("dev-a"),
        "dev-a-mgmt",
        clean_start=False,
        session_expiry=3600,
    )
    dev.subscribe("mgmt/dev-a/down/#")
    dev.publish("mgmt/dev-a/up/meta", b'{"v":1,"ts":1}', retain=True)
    dev.disconnect()
    stack.broker.restart()
    service = _mgmt_service(stack, probes)
    # Retained messages reach a new shared subscriber on subscribe (mosquitto 2.0.11).
    assert service.wait_for().topic == "mgmt/dev-a/up/meta"
    service.publish("mgmt/dev-a/down/config", b"{}")  # queued in dev-a's session
    again = probes(
        stack.management_endpoint,
        stack.device("dev-a"),
        "dev-a-mgmt",
        clean_start=False,
        session_expiry=3600,
    )
    assert again.wait_for().topic == "mgmt/dev-a/down/config"


def test_solution_group_is_separate(stack: Stack, probes: MakeProbe) -> None:
    sol = probes(stack.service_endpoint, stack.service_identity("solution"), "solution-1")
    assert not sol.subscribe(shared(_group(stack, "solution"), SOLUTION_DATA_UP)).is_failure
    dev = probes(stack.solution_endpoint, stack.device("dev-a"), "dev-a-sol")
    dev.publish("sol/dev-a/up/data/temp", b'{"v":1}')
    assert sol.wait_for().topic == "sol/dev-a/up/data/temp"


def test_broker_config_refuses_bad_settings_with_a_reason(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    tls = tmp_path / "tls"

    def cfg(m: int, s: int, v: int) -> BrokerConfig:
        return BrokerConfig(BrokerTls.exported(tls), tmp_path / "run", m, s, v)

    # the missing file by its option, and the command that makes it
    missing = (
        re.escape(f"missing --cert {tls / 'broker.crt'}: ")
        + ".*twelvefactor-pki export PKI broker DIR"
    )
    with pytest.raises(BrokerError, match=missing):
        render_config(cfg(1883, 1884, 1885))
    pki.init()
    pki.server("broker", dns=["localhost"])
    pki.export("broker", tls)
    with pytest.raises(BrokerError, match="must differ"):
        render_config(cfg(1883, 1883, 1885))
    with pytest.raises(BrokerError, match="out of range"):
        render_config(cfg(0, 1884, 1885))
    files = render_config(cfg(1883, 1884, 1885))
    conf = files["mosquitto.conf"]
    assert conf.count("require_certificate true") == 3
    assert "allow_anonymous true" not in conf and "listener 1883 127.0.0.1" in conf
    assert f"cafile {(tls / 'service-ca.crt').resolve()}" in conf
    assert f"keyfile {(tls / 'broker.key').resolve()}" in conf and str(pki.root) not in conf


# -- client ids belong to certificates (the identity plugin) --------------------------

# (listener, certificate, client id): every id another identity owns, and near misses.
TAKEOVERS = [
    ("solution", "dev-a", "solution-1"),
    ("management", "dev-a", "management-1"),
    ("management", "dev-a", "dev-b-mgmt"),
    ("solution", "dev-a", "dev-b-sol"),
    ("management", "dev-a", "dev-a"),
    ("management", "dev-a", "dev-a-mgmt-2"),
    ("solution", "dev-a", "xdev-a-sol"),
    ("solution", "dev-a", "dev-a-mgmt"),  # each session on its own listener
    ("management", "dev-a", "dev-a-sol"),
    ("management", "dev-a", "dev-b-eye"),
    ("service", "solution", "management-1"),
    ("service", "solution", "dev-a-sol"),
    ("service", "management", "management-"),
    ("service", "management", "management-1x"),
]


def _endpoint_and_identity(stack: Stack, listener: str, who: str) -> tuple[Endpoint, Identity]:
    if listener == "service":
        return stack.service_endpoint, stack.service_identity(who)
    endpoint = stack.management_endpoint if listener == "management" else stack.solution_endpoint
    return endpoint, stack.device(who)


@pytest.mark.parametrize(("listener", "who", "client_id"), TAKEOVERS)
def test_a_client_id_another_identity_owns_is_refused(
    stack: Stack, listener: str, who: str, client_id: str
) -> None:
    endpoint, identity = _endpoint_and_identity(stack, listener, who)
    _connects(
        endpoint,
        identity,
        f"{who}-mgmt"
        if listener == "management"
        else (f"{who}-sol" if listener == "solution" else f"{who}-7"),
    )  # positive control: the same certificate on the same listener with its own id
    with pytest.raises(ProbeError, match="Not authorized"):
        Probe(endpoint, identity, client_id).connect()
    assert f'refused client id "{client_id}" for certificate CN "{who}"' in stack.broker.log_tail(
        200
    )


def test_a_username_other_than_the_certificates_cn_is_refused(stack: Stack) -> None:
    probe = Probe(stack.management_endpoint, stack.device("dev-a"), "dev-a-mgmt")
    probe.client.username_pw_set("solution")
    with pytest.raises(ProbeError, match="Not authorized"):
        probe.connect()
    assert "username differs from the certificate's CN" in stack.broker.log_tail(200)


def test_a_device_cannot_throw_the_solution_service_off_and_nothing_acked_is_lost(
    stack: Stack, probes: MakeProbe
) -> None:
    """The attack of the issue: a device connecting as `solution-1` with clean start while
    another device's messages flow. Every message the broker acknowledged is archived."""
    solution = stack.solution()
    solution.start()
    sender = probes(stack.solution_endpoint, stack.device("dev-b"), "dev-b-sol")
    refused = 0
    for seq in range(1, 201):
        sender.publish("sol/dev-b/up/data/t", _envelope("dev-b", seq))
        if seq % 10 == 0:
            with pytest.raises(ProbeError, match="Not authorized"):
                Probe(stack.solution_endpoint, stack.device("dev-a"), solution.name).connect()
            refused += 1
    assert refused == 20
    wait_until(
        lambda: len(read_archive(stack.archive_dir / "dev-b.jsonl")) >= 200,
        what="200 archived messages",
    )
    assert [r["seq"] for r in read_archive(stack.archive_dir / "dev-b.jsonl")] == list(
        range(1, 201)
    )


def _envelope(device: str, seq: int) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "device": device,
            "queue_id": "0123456789abcdef",
            "seq": seq,
            "stream": "t",
            "ts": 1.0,
            "payload": base64.b64encode(b"x").decode(),
        }
    ).encode()


def test_the_broker_does_not_start_without_its_identity_plugin(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWELVEFACTOR_BROKER_PLUGIN", str(tmp_path / "absent.so"))
    tls = stack.broker.cfg.tls
    cfg = BrokerConfig(tls, tmp_path / "run", 1883, 1884, 1885)
    with pytest.raises(BrokerError, match=r"identity plugin is missing.*make -C services/broker"):
        render_config(cfg)
    rendered = render_config(
        BrokerConfig(tls, tmp_path / "run", 1883, 1884, 1885, identity_plugin=Path("/x/p.so"))
    )["mosquitto.conf"]
    assert rendered.count("plugin /x/p.so") == 3
    assert "use_identity_as_username" not in rendered
    assert rendered.count("plugin_opt_device_suffixes -mgmt\n") == 1
    assert rendered.count("plugin_opt_device_suffixes -sol\n") == 1


# -- sizes and topics a device may use (issue 19, finding 4) ---------------------------


def test_a_device_writes_only_the_protocols_topics_so_no_junk_is_retained(
    stack: Stack, probes: MakeProbe
) -> None:
    dev = probes(stack.management_endpoint, stack.device("dev-a"), "dev-a-mgmt")
    sol = probes(stack.solution_endpoint, stack.device("dev-a"), "dev-a-sol")
    junk = b"x" * 100_000
    for i in range(20):
        dev.publish(f"mgmt/dev-a/up/junk/{i}", junk, retain=True)
        sol.publish(f"sol/dev-a/up/junk/{i}", junk, retain=True)
    dev.publish("mgmt/dev-a/up/health/extra", b'{"v":1}', retain=True)
    sol.publish("sol/dev-a/up/data/t/extra", b'{"v":1}', retain=True)
    dev.publish("mgmt/dev-a/up/online", b'{"v":1,"online":true,"ts":1}', retain=True)
    sol.publish("sol/dev-a/up/data/t", b'{"v":1,"marker":1}', retain=True)
    # A service arriving later gets the retained messages: only the protocol's.
    mgmt = probes(stack.service_endpoint, stack.service_identity("management"), "management-5")
    solution = probes(stack.service_endpoint, stack.service_identity("solution"), "solution-5")
    mgmt.subscribe("mgmt/+/up/#")
    solution.subscribe("sol/+/up/#")
    assert [m.topic for m in mgmt.drain(QUIET)] == ["mgmt/dev-a/up/online"]
    assert [m.topic for m in solution.drain(0.5)] == ["sol/dev-a/up/data/t"]


def test_a_packet_over_the_protocols_largest_message_is_refused(
    stack: Stack, probes: MakeProbe
) -> None:
    service = probes(stack.service_endpoint, stack.service_identity("solution"), "solution-6")
    service.subscribe("sol/+/up/#")
    big = Probe(stack.solution_endpoint, stack.device("dev-a"), "dev-a-sol")
    big.connect()
    big.client.publish("sol/dev-a/up/data/t", b"x" * (MAX_PACKET + 1), qos=1)
    wait_until(big._disconnected.is_set, what="the broker to drop the client")
    big.client.loop_stop()
    assert service.drain(QUIET) == []
    # The largest message the protocol allows still goes through.
    ok = probes(stack.solution_endpoint, stack.device("dev-a"), "dev-a-sol")
    ok.publish("sol/dev-a/up/data/t", b"y" * MAX_MESSAGE)
    assert len(service.wait_for().payload) == MAX_MESSAGE
