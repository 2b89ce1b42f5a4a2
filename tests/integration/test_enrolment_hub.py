"""The hub's side of enrolment without a running hub: sign, peer, registry; decommission.

The network tier (tests/network/test_enrolment.py) follows docs/enrolment.md
through a running hub; here each registration and its refusals are checked
where they are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from twelvefactor_agent.enrol import der, ec
from twelvefactor_agent.enrol.bundle import Hardware, Request
from twelvefactor_agent.enrol.device import make_request
from twelvefactor_services.hub.cli import main as hub
from twelvefactor_services.hub.enrol import HubEnrolError, decommission, enrol
from twelvefactor_services.hub.peers import PeerStore
from twelvefactor_services.hub.service import Settings, init, registry_target
from twelvefactor_services.management import devicelist, logic, registry
from twelvefactor_services.management.store import Db
from twelvefactor_services.pki import Pki, PkiError

pytestmark = pytest.mark.integration


@pytest.fixture
def root(tmp_path: Path) -> Path:
    hub_root = tmp_path / "hub"
    init(hub_root, Settings("10.99.0.0/24", None, 51820, 8883, 8884, 8443))
    return hub_root


def _request(tmp: Path, device: str) -> Request:
    return make_request(tmp / device, device, Hardware("qemux86-64", "1.0"), owners=None)


def test_one_step_registers_the_device_everywhere(root: Path, tmp_path: Path) -> None:
    request = _request(tmp_path, "dev-007")
    response = enrol(root, request, endpoint="192.0.2.1", group="field", tags=["site:b", "x"])
    cert = x509.load_pem_x509_certificate(response.certificate_pem.encode())
    assert cert.subject.rfc4514_string() == "CN=dev-007"
    assert (
        x509.ExtendedKeyUsageOID.CLIENT_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    pki = Pki(root / "pki")
    assert not pki.device_paths("dev-007").key.exists(), "the key never left the device"
    peers = PeerStore(Db(registry_target(root)))
    peer = peers.get("dev-007")
    peers.db.close()
    assert peer is not None and peer.public_key == request.wireguard_public_key
    assert response.network.tunnel_address_v4 == f"{peer.address_v4}/24"
    db = Db(registry_target(root), migrate=False)
    shown = registry.get_device(db, "dev-007")
    assert shown is not None
    assert shown["hardware"] == {"board": "qemux86-64", "revision": "1.0"}
    assert shown["tags"] == ["site:b", "x"] and shown["retired"] is None
    assert shown["online"] is None and shown["first_seen"] is None  # not seen yet
    assert registry.group_config(db, "field")["members"] == ["dev-007"]  # type: ignore[index]
    assert [d["id"] for d in devicelist.list_devices(db)] == ["dev-007"]
    db.close()

    # the same device, or the same WireGuard key, is not enrolled twice
    with pytest.raises(HubEnrolError, match="already enrolled"):
        enrol(root, request, endpoint="192.0.2.1")
    twin = Request("dev-008", _request(tmp_path, "dev-008").csr_pem, request.wireguard_public_key)
    with pytest.raises(HubEnrolError, match="already uses this WireGuard key"):
        enrol(root, twin, endpoint="192.0.2.1")
    assert not pki.device_paths("dev-008").cert.exists()


def test_refusals_leave_nothing_behind(root: Path, tmp_path: Path) -> None:
    request = _request(tmp_path, "dev-009")
    for kwargs, match in (
        ({"tags": ["Bad Tag"]}, "invalid tag"),
        ({"group": "No Group"}, "invalid group"),
        ({"endpoint": "hub.example"}, "--endpoint"),
    ):
        args = {"endpoint": "192.0.2.1", **kwargs}
        with pytest.raises(HubEnrolError, match=match):
            enrol(root, request, **args)  # type: ignore[arg-type]
        assert not Pki(root / "pki").device_paths("dev-009").cert.exists()
        peers = PeerStore(Db(registry_target(root)))
        assert peers.get("dev-009") is None
        peers.db.close()
    # a request whose CN is not the device id it claims
    d = ec.new_private_key()
    forged = Request(
        "dev-010",
        der.pem("CERTIFICATE REQUEST", der.certificate_request(d, "dev-011")),
        request.wireguard_public_key,
    )
    with pytest.raises(HubEnrolError, match="expected exactly CN=dev-010"):
        enrol(root, forged, endpoint="192.0.2.1")


def test_a_request_not_signed_by_its_key_is_refused(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    pki.init()
    d = ec.new_private_key()
    csr = bytearray(der.certificate_request(d, "dev-001"))
    csr[-5] ^= 1  # inside the signature
    with pytest.raises(PkiError, match="does not verify"):
        pki.sign_request("dev-001", der.pem("CERTIFICATE REQUEST", bytes(csr)).encode())


def test_decommission_revokes_removes_the_peer_and_retires_with_history(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enrol(root, _request(tmp_path, "dev-020"), endpoint="192.0.2.1", group="field")
    reg = registry.Registry(Db(registry_target(root)))
    reg.apply("dev-020", logic.OnlineReport(True, None, None), 100.0)
    reg.db.close()
    assert hub(["decommission", str(root), "dev-020"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["peer_removed"] is True
    pki = Pki(root / "pki")
    assert int(out["revoked_serial"], 16) in pki.revoked()
    db = Db(registry_target(root), migrate=False)
    shown = registry.get_device(db, "dev-020")
    assert shown is not None and shown["retired"]["group"] == "field"
    assert shown["retired"]["at"] > 0
    assert [h["online"] for h in registry.history(db, "dev-020")] == [True]  # kept
    assert registry.group_config(db, "field")["members"] == []  # type: ignore[index]
    db.close()
    assert hub(["decommission", str(root), "dev-020"]) == 2
    assert "already decommissioned" in capsys.readouterr().err
    # and its id is not enrolled again
    with pytest.raises(HubEnrolError, match="was decommissioned"):
        enrol(root, _request(tmp_path / "again", "dev-020"), endpoint="192.0.2.1")
    with pytest.raises(HubEnrolError, match="unknown here"):
        decommission(root, "dev-404")
