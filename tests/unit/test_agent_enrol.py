"""Enrolment on the device: keys, request and response checks, with the standard library only.

The hand-written P-256, X25519 and DER are checked against `cryptography`
(a development dependency, not on the device).
"""

from __future__ import annotations

import base64
import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec as cec
from cryptography.hazmat.primitives.asymmetric import x25519 as cx25519
from cryptography.x509.oid import NameOID
from twelvefactor_agent.enrol import der, ec
from twelvefactor_agent.enrol.bundle import (
    EnrolError,
    Hardware,
    Request,
    Response,
    check_response,
)
from twelvefactor_agent.enrol.datafiles import NetworkSettings
from twelvefactor_agent.enrol.device import install_response, make_request

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (ROOT / "agent/config/agent.toml").read_text()
HUB_KEY = base64.b64encode(bytes(range(32))).decode()
NETWORK = NetworkSettings(
    "192.0.2.1", 51820, HUB_KEY, "10.99.0.2/24", "10.99.0.1", 8883, 8884, 8443
)


def test_p256_keys_and_signatures_agree_with_cryptography() -> None:
    d = ec.new_private_key()
    theirs = cec.derive_private_key(d, cec.SECP256R1()).public_key().public_numbers()
    assert ec.public_key(d) == (theirs.x, theirs.y)
    r, s = ec.sign(d, b"message")
    signature = der._seq(der._int(r), der._int(s))
    cec.derive_private_key(d, cec.SECP256R1()).public_key().verify(
        signature, b"message", cec.ECDSA(hashes.SHA256())
    )
    assert ec.verify(ec.public_key(d), b"message", (r, s))
    assert not ec.verify(ec.public_key(d), b"other", (r, s))


def test_rfc6979_nonce_matches_the_rfc_vector() -> None:
    # RFC 6979 A.2.5, P-256 with SHA-256, message "sample"
    d = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
    r, s = ec.sign(d, b"sample")
    assert r == 0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716
    assert s == 0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8


def test_x25519_agrees_with_cryptography_and_is_clamped_like_wg_genkey() -> None:
    private = ec.new_wireguard_key()
    assert private[0] & 7 == 0 and private[31] & 0x80 == 0 and private[31] & 0x40
    theirs = cx25519.X25519PrivateKey.from_private_bytes(private).public_key()
    assert ec.wireguard_public(private) == theirs.public_bytes_raw()


def test_the_request_and_the_key_file_are_what_openssl_reads() -> None:
    d = ec.new_private_key()
    csr = x509.load_der_x509_csr(der.certificate_request(d, "dev-007"))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-007"
    key = serialization.load_pem_private_key(
        der.pem("PRIVATE KEY", der.private_key_pkcs8(d)).encode(), None
    )
    assert isinstance(key, cec.EllipticCurvePrivateKey)
    assert key.private_numbers().private_value == d
    assert der.private_key_from_pkcs8(der.private_key_pkcs8(d)) == d


def _sign(request: Request, *, cn: str | None = None) -> tuple[str, str]:
    """A certificate for the request's key (or with another CN), and its CA."""
    ca_key = cec.generate_private_key(cec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    csr = x509.load_pem_x509_csr(request.csr_pem.encode())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or request.device)]))
        .issuer_name(ca_name)
        .public_key(csr.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return cert.public_bytes(pem).decode(), ca.public_bytes(pem).decode()


def test_request_makes_private_keys_0600_and_only_public_parts_leave(tmp_path: Path) -> None:
    made = make_request(tmp_path, "dev-007", Hardware("qemux86-64", "1.0"), owners=None)
    for rel in ("identity/device.key", "identity/wg.key"):
        assert stat.S_IMODE((tmp_path / rel).stat().st_mode) == 0o600
    text = made.to_json()
    assert "PRIVATE" not in text
    assert (tmp_path / "identity/wg.key").read_text().strip() not in text
    again = Request.from_json(text)
    assert again == made
    # asked again: the same keys, the same request; another id is refused
    assert make_request(tmp_path, "dev-007", Hardware("qemux86-64", "1.0"), None) == made
    with pytest.raises(EnrolError, match="keys made for 'dev-007', not 'dev-008'"):
        make_request(tmp_path, "dev-008", None, None)


def test_install_writes_the_files_and_refuses_a_response_for_another_key(
    tmp_path: Path,
) -> None:
    mine = make_request(tmp_path / "a", "dev-007", None, owners=None)
    other = make_request(tmp_path / "b", "dev-007", None, owners=None)
    cert, ca = _sign(other)
    wrong_key = Response("dev-007", cert, ca, mine.wireguard_public_key, NETWORK)
    with pytest.raises(EnrolError, match="another key than this device's"):
        install_response(tmp_path / "a", wrong_key, TEMPLATE, owners=None)
    cert, ca = _sign(mine)
    wrong_wg = Response("dev-007", cert, ca, other.wireguard_public_key, NETWORK)
    with pytest.raises(EnrolError, match="WireGuard key"):
        install_response(tmp_path / "a", wrong_wg, TEMPLATE, owners=None)
    cert_cn, ca_cn = _sign(mine, cn="dev-999")
    with pytest.raises(EnrolError, match="names 'dev-999'"):
        install_response(
            tmp_path / "a",
            Response("dev-007", cert_cn, ca_cn, mine.wireguard_public_key, NETWORK),
            TEMPLATE,
            owners=None,
        )
    with pytest.raises(EnrolError, match="for 'dev-008', this device is 'dev-007'"):
        check_response(
            Response("dev-008", cert, ca, mine.wireguard_public_key, NETWORK), "dev-007", b"", ""
        )
    assert not (tmp_path / "a/config/agent.toml").exists()  # nothing written on refusal

    good = Response.from_json(
        Response("dev-007", cert, ca, mine.wireguard_public_key, NETWORK).to_json()
    )
    written = install_response(tmp_path / "a", good, TEMPLATE, owners=None)
    assert [p.relative_to(tmp_path / "a").as_posix() for p in written] == [
        "identity/device.crt",
        "identity/ca.crt",
        "provisioning/network.conf",
        "config/agent.toml",
    ]
    conf = (tmp_path / "a/provisioning/network.conf").read_text()
    assert "TUNNEL_ADDRESS_V4=10.99.0.2/24\n" in conf and f"HUB_PUBLIC_KEY={HUB_KEY}\n" in conf
    toml = (tmp_path / "a/config/agent.toml").read_text()
    assert 'id = "dev-007"' in toml and 'host = "10.99.0.1"' in toml


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{}", "not a twelvefactor-enrolment-request"),
        ('{"kind": "twelvefactor-enrolment-request", "v": 1, "device": "Bad!"}', "device id"),
        ("not json", "not JSON"),
    ],
)
def test_a_bad_request_is_refused_with_the_reason(text: str, match: str) -> None:
    with pytest.raises(EnrolError, match=match):
        Request.from_json(text)


def test_hwrevision_is_board_and_revision() -> None:
    assert Hardware.parse_hwrevision("raspberrypi4-64 1.0\n") == Hardware("raspberrypi4-64", "1.0")
    with pytest.raises(EnrolError, match="expected 'board revision'"):
        Hardware.parse_hwrevision("just-one\n")
