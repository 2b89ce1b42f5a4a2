"""twelvefactor-pki: files, key modes, chains, names."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twelvefactor_services.pki import Pki, PkiError, Validity, main


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    p = Pki(tmp_path / "pki")
    p.init()
    return p


def test_cli_creates_the_documented_layout_with_private_keys_0600(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    assert main(["init", str(d)]) == 0
    assert main(["server", str(d), "broker", "--dns", "localhost", "--ip", "127.0.0.1"]) == 0
    assert main(["service", str(d), "management"]) == 0
    assert main(["device", str(d), "dev-001", "--days", "30"]) == 0
    expected = [
        "ca.crt",
        "ca.key",
        "service-ca.crt",
        "service-ca.key",
        "servers/broker.crt",
        "servers/broker.key",
        "services/management.crt",
        "services/management.key",
        "devices/dev-001/device.crt",
        "devices/dev-001/device.key",
        "devices/dev-001/ca.crt",
    ]
    for rel in expected:
        assert (d / rel).is_file(), rel
    for key in d.rglob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert (d / "devices/dev-001/ca.crt").read_bytes() == (d / "ca.crt").read_bytes()


def test_ca_is_a_ca(pki: Pki) -> None:
    ca = _load(pki.ca_cert)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert bc.ca is True
    assert ku.key_cert_sign is True


def test_device_chain_verifies_and_cn_is_the_device_id(pki: Pki) -> None:
    paths = pki.device("dev-042")
    leaf = _load(paths.cert)
    assert _cn(leaf) == "dev-042"
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    # Signature and issuer check; openssl checks the full chain and purpose below.
    leaf.verify_directly_issued_by(_load(pki.ca_cert))


def test_server_chain_verifies_for_its_names(pki: Pki) -> None:
    paths = pki.server("broker", dns=["localhost"], ips=["127.0.0.1"])
    store = verification.Store([_load(pki.ca_cert)])
    verifier = (
        verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName("localhost"))
    )
    verifier.verify(_load(paths.cert), [])


def test_openssl_agrees_on_chains_and_the_two_cas_are_separate(pki: Pki, openssl: str) -> None:
    device = pki.device("dev-1")
    service = pki.service("solution")

    def verify(ca: Path, cert: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [openssl, "verify", "-purpose", "sslclient", "-CAfile", str(ca), str(cert)],
            capture_output=True,
            text=True,
            check=False,
        )

    assert verify(pki.ca_cert, device.cert).returncode == 0
    assert verify(pki.service_ca_cert, service.cert).returncode == 0
    # A device certificate is worthless where services connect, and vice versa.
    assert verify(pki.service_ca_cert, device.cert).returncode != 0
    assert verify(pki.ca_cert, service.cert).returncode != 0


@pytest.mark.parametrize(
    "bad", ["management", "solution", "", "-dev", "Dev1", "dev_1", "a" * 64, "dev/1", "dev+1"]
)
def test_reserved_and_invalid_device_ids_are_refused(pki: Pki, bad: str) -> None:
    with pytest.raises(PkiError):
        pki.device(bad)
    assert not (pki.root / "devices" / bad / "device.key").exists() or bad == ""


def test_cli_refuses_reserved_id_with_a_message(
    pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["device", str(pki.root), "management"]) == 2
    assert "reserved" in capsys.readouterr().err


def test_existing_keys_are_never_overwritten(pki: Pki) -> None:
    pki.device("dev-1")
    before = pki.device_paths("dev-1").key.read_bytes()
    with pytest.raises(PkiError):
        pki.device("dev-1")
    with pytest.raises(PkiError):
        pki.init()
    assert pki.device_paths("dev-1").key.read_bytes() == before


def test_explicit_validity_window_makes_an_expired_certificate(pki: Pki, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    window = Validity(now - dt.timedelta(days=10), now - dt.timedelta(days=1))
    leaf = _load(pki.device("dev-old", window).cert)
    assert leaf.not_valid_after_utc < now
    d = str(pki.root)
    assert (
        main(["device", d, "dev-old2", "--not-before", "2020-01-01", "--not-after", "2020-02-01"])
        == 0
    )
    assert _load(pki.device_paths("dev-old2").cert).not_valid_after_utc.year == 2020
    assert main(["device", d, "dev-x", "--not-before", "2020-01-01"]) == 2


# -- export: what one process is given (issue 19, finding 16a) --------------------------


def test_export_copies_exactly_a_process_files_keys_0600_and_refuses_strangers(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "management-tls"
    # what is missing is named, with the command that makes it
    with pytest.raises(PkiError, match=r"services/management\.crt.*twelvefactor-pki service"):
        pki.export("management", out)
    pki.service("management")
    with pytest.raises(PkiError, match=r"servers/artifacts\.crt.*twelvefactor-pki server .*--ip"):
        pki.export("management", out)
    pki.server("artifacts", ips=["127.0.0.1"])
    with pytest.raises(PkiError, match=r"servers/management-api\.crt.*twelvefactor-pki server"):
        pki.export("management", out)
    pki.server("management-api", ips=["127.0.0.1"])
    assert main(["export", str(pki.root), "management", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    names = ["api.crt", "api.key", "artifacts.crt", "artifacts.key", "ca.crt"]
    names += ["management.crt", "management.key"]
    assert printed == [str(out / n) for n in names]
    assert sorted(p.name for p in out.iterdir()) == names
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in names:
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == (0o600 if name.endswith(".key") else 0o644), name
    assert (out / "management.key").read_bytes() == pki.service_paths("management").key.read_bytes()
    assert (out / "ca.crt").read_bytes() == pki.ca_cert.read_bytes()

    # a renewal is copied over the old files; a file that is not the process's is refused
    (pki.root / "services" / "management.key").unlink()
    pki.service("management")
    pki.export("management", out)
    assert (out / "management.key").read_bytes() == pki.service_paths("management").key.read_bytes()
    (out / "ca.key").write_bytes((pki.root / "ca.key").read_bytes())
    with pytest.raises(PkiError, match=r"holds files that are not its process's: ca\.key"):
        pki.export("management", out)
    assert main(["export", str(pki.root), "management", str(out)]) == 2
    assert "ca.key" in capsys.readouterr().err


def test_each_process_is_given_its_own_files_and_no_ca_key(pki: Pki) -> None:
    assert set(pki.credentials("broker")) == {
        "broker.crt",
        "broker.key",
        "ca.crt",
        "service-ca.crt",
        "crl.pem",
    }
    assert set(pki.credentials("solution")) == {"solution.crt", "solution.key", "ca.crt"}
    every = [
        source
        for p in ("broker", "management", "solution")
        for source in pki.credentials(p).values()
    ]
    assert pki.root / "ca.key" not in every and pki.root / "service-ca.key" not in every
    with pytest.raises(PkiError, match="unknown process 'hub'"):
        pki.credentials("hub")
