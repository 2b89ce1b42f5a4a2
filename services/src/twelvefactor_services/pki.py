"""Certificate authority for the reference set-up: broker, services and devices.

Two independent CAs live in one directory. The *device CA* (``ca.crt``) signs
the broker's server certificates and every device certificate; the *service
CA* (``service-ca.crt``) signs only the management and solution service
certificates. The broker's device listeners trust only the device CA and its
service listener only the service CA, so a device certificate can never reach
the listener where the services' shared subscriptions live, and a service
certificate can never pose as a device.

Layout of a PKI directory::

    ca.crt ca.key                      device CA (also signs server certs)
    service-ca.crt service-ca.key      service CA
    servers/NAME.crt servers/NAME.key  broker server certificates
    services/NAME.crt services/NAME.key
    devices/ID/device.crt devices/ID/device.key devices/ID/ca.crt
    crl.pem                            the device CA's revocation list (revoke)

A device certificate is made either with its key here (``device``) or for a
key the device made itself, from its certificate request (``sign_request``:
enrolment, docs/enrolment.md); then no device key is ever here. ``revoke``
puts a device's certificate on the CRL, which the broker is given with its
own files and reads again the moment it changes.

Private keys are created with mode 0600 from the start (never chmod'ed after).

No running process is given this directory: it holds both CA keys and every
device key made here. ``export`` copies what one process of the cloud side
needs into a folder of its own (``Pki.credentials``: its certificate and key,
the CA certificates it checks peers with), and the process is given those
files. Where the CA is kept offline, export runs there and only the folders
travel (docs/pki.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twelvefactor_agent.protocol.names import DEVICE_ID_RE

SERVICE_NAMES = ("management", "solution")
# The processes of the cloud side that hold credentials (export PROCESS).
PROCESSES = ("broker", *SERVICE_NAMES)
# Default names in servers/: the broker's certificate and the management service's artifact server.
BROKER_SERVER = "broker"
ARTIFACT_SERVER = "artifacts"
API_SERVER = "management-api"  # the management service's operator API (HTTPS)
RESERVED_IDS = frozenset(SERVICE_NAMES)
DEFAULT_DAYS = 825
CA_DAYS = 3650


class PkiError(Exception):
    """A PKI request that cannot be honoured (bad name, missing CA, file exists)."""


@dataclass(frozen=True)
class Validity:
    """Explicit validity window; tests use it to make expired certificates."""

    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def days(cls, days: int) -> Validity:
        if days < 1:
            raise PkiError(f"--days must be at least 1, got {days}")
        # Backdate a little: a peer whose clock is slightly behind still accepts it.
        now = dt.datetime.now(dt.UTC)
        return cls(now - dt.timedelta(minutes=5), now + dt.timedelta(days=days))


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Credentials:
    """A process's credentials folder as ``export`` writes it: the files' names there.

    ``ca`` is the device CA's certificate: the broker's server certificate and every
    device's are signed by it. ``service_ca`` (broker only) checks the services'
    certificates; ``artifact_cert``/``artifact_key`` and ``api_cert``/``api_key``
    (management only) are the artifact server's and the operator API's.
    """

    folder: Path
    process: str

    @property
    def cert(self) -> Path:
        return self.folder / f"{self.process}.crt"

    @property
    def key(self) -> Path:
        return self.folder / f"{self.process}.key"

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def service_ca(self) -> Path:
        return self.folder / "service-ca.crt"

    @property
    def crl(self) -> Path:
        """The device CA's revocation list (broker only)."""
        return self.folder / "crl.pem"

    @property
    def artifact_cert(self) -> Path:
        return self.folder / "artifacts.crt"

    @property
    def artifact_key(self) -> Path:
        return self.folder / "artifacts.key"

    @property
    def api_cert(self) -> Path:
        return self.folder / "api.crt"

    @property
    def api_key(self) -> Path:
        return self.folder / "api.key"


def validate_device_id(device_id: str) -> str:
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise PkiError(f"invalid device id {device_id!r}: must match [a-z0-9][a-z0-9-]{{0,62}}")
    if device_id in RESERVED_IDS:
        raise PkiError(f"device id {device_id!r} is reserved for a service")
    return device_id


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise PkiError(f"{path} exists; refusing to overwrite a private key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _install(source: Path, dest: Path, mode: int) -> None:
    """Copy ``source`` to ``dest`` with ``mode``, replacing ``dest`` in one step.

    The copy is made as a temporary file in ``dest``'s folder, which mkstemp creates
    0600: a key is never readable by others, not even for a moment.
    """
    data = source.read_bytes()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise


def export_files(files: Mapping[str, Path], folder: Path) -> None:
    """Copy ``files`` (name in ``folder`` -> source) into ``folder``; keys 0600, others 0644.

    ``folder`` (0700) must hold nothing but these names: a file left there from
    elsewhere, a CA key above all, is refused rather than kept or deleted.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    for leftover in folder.glob(".*"):  # a copy an interrupted export left (see _install)
        if any(leftover.name.startswith(f".{name}.") for name in files):
            leftover.unlink()
    strangers = sorted(p.name for p in folder.iterdir() if p.name not in files)
    if strangers:
        raise PkiError(
            f"{folder} holds files that are not its process's: {', '.join(strangers)} "
            f"(expected only {', '.join(sorted(files))}): remove them, or export to an empty folder"
        )
    for name, source in files.items():
        _install(source, folder / name, 0o600 if name.endswith(".key") else 0o644)


def _load_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not cert_path.exists() or not key_path.exists():
        raise PkiError(f"no CA at {cert_path}: run 'twelvefactor-pki init' first")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path}: expected an EC private key")
    return cert, key


def _make_ca(
    common_name: str, validity: Validity
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    validity: Validity,
    sans: Sequence[x509.GeneralName] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(ca_cert, ca_key, common_name, key.public_key(), usage, validity, sans)
    return cert, key


def _certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    public_key: ec.EllipticCurvePublicKey,
    usage: x509.ObjectIdentifier,
    validity: Validity,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    """The one certificate profile for servers, services and devices (``usage`` differs)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


class Pki:
    """A PKI directory (see the module docstring for its layout)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def service_ca_cert(self) -> Path:
        return self.root / "service-ca.crt"

    def init(self, validity: Validity | None = None) -> None:
        """Create both CAs; refuses to run over an existing CA."""
        if self.ca_cert.exists() or self.service_ca_cert.exists():
            raise PkiError(f"{self.root} already holds a CA")
        validity = validity or Validity.days(CA_DAYS)
        self.root.mkdir(parents=True, exist_ok=True)
        for stem, cn in (
            ("ca", "twelvefactor device CA"),
            ("service-ca", "twelvefactor service CA"),
        ):
            cert, key = _make_ca(cn, validity)
            _write_key(self.root / f"{stem}.key", key)
            _write_cert(self.root / f"{stem}.crt", cert)

    def server(
        self,
        name: str,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        validity: Validity | None = None,
    ) -> CertPaths:
        """A broker server certificate (serverAuth) signed by the device CA."""
        if not DEVICE_ID_RE.fullmatch(name):
            raise PkiError(f"invalid server name {name!r}: must match [a-z0-9][a-z0-9-]{{0,62}}")
        if not dns and not ips:
            raise PkiError("a server certificate needs at least one --dns or --ip")
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        for ip in ips:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError:
                raise PkiError(f"invalid IP address {ip!r}") from None
        ca_cert, ca_key = _load_ca(self.ca_cert, self.root / "ca.key")
        cert, key = _issue(
            ca_cert,
            ca_key,
            name,
            ExtendedKeyUsageOID.SERVER_AUTH,
            validity or Validity.days(DEFAULT_DAYS),
            sans,
        )
        paths = self.server_paths(name)
        _write_key(paths.key, key)
        _write_cert(paths.cert, cert)
        return paths

    def service(self, name: str, validity: Validity | None = None) -> CertPaths:
        """A client certificate for a service identity, signed by the service CA."""
        if name not in SERVICE_NAMES:
            raise PkiError(f"unknown service {name!r}: expected one of {', '.join(SERVICE_NAMES)}")
        ca_cert, ca_key = _load_ca(self.service_ca_cert, self.root / "service-ca.key")
        cert, key = _issue(
            ca_cert,
            ca_key,
            name,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            validity or Validity.days(DEFAULT_DAYS),
        )
        paths = self.service_paths(name)
        _write_key(paths.key, key)
        _write_cert(paths.cert, cert)
        return paths

    def device(self, device_id: str, validity: Validity | None = None) -> CertPaths:
        """A device client certificate (CN = device id) signed by the device CA.

        The device directory also gets ``ca.crt``, the CA a device uses to check the broker.
        """
        validate_device_id(device_id)
        ca_cert, ca_key = _load_ca(self.ca_cert, self.root / "ca.key")
        paths = self.device_paths(device_id)
        if paths.cert.exists():
            raise PkiError(f"device {device_id!r} already has a certificate at {paths.cert}")
        cert, key = _issue(
            ca_cert,
            ca_key,
            device_id,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            validity or Validity.days(DEFAULT_DAYS),
        )
        _write_key(paths.key, key)
        _write_cert(paths.cert, cert)
        _write_cert(paths.ca, ca_cert)
        return paths

    def sign_request(
        self, device_id: str, request_pem: bytes, validity: Validity | None = None
    ) -> CertPaths:
        """A device certificate for the key in ``request_pem`` (PKCS#10), as ``device`` makes.

        The request must be signed by its own key (proof the device holds it), name
        exactly CN = ``device_id`` and hold a P-256 key. Only the certificate and
        ``ca.crt`` are written: the key never left the device.
        """
        validate_device_id(device_id)
        try:
            csr = x509.load_pem_x509_csr(request_pem)
        except ValueError as exc:
            raise PkiError(f"not a PEM certificate request: {exc}") from None
        if not csr.is_signature_valid:
            raise PkiError("the certificate request's signature does not verify with its own key")
        expected = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
        if csr.subject != expected:
            raise PkiError(
                f"the certificate request names {csr.subject.rfc4514_string()!r}, "
                f"expected exactly CN={device_id}"
            )
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise PkiError("the certificate request's key is not an EC P-256 key")
        ca_cert, ca_key = _load_ca(self.ca_cert, self.root / "ca.key")
        paths = self.device_paths(device_id)
        if paths.cert.exists():
            raise PkiError(f"device {device_id!r} already has a certificate at {paths.cert}")
        cert = _certificate(
            ca_cert,
            ca_key,
            device_id,
            public,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            validity or Validity.days(DEFAULT_DAYS),
        )
        _write_cert(paths.cert, cert)
        _write_cert(paths.ca, ca_cert)
        return paths

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    def revoked(self) -> dict[int, dt.datetime]:
        """Serial -> revocation time of every certificate on the CRL (empty without one)."""
        if not self.crl.exists():
            return {}
        crl = x509.load_pem_x509_crl(self.crl.read_bytes())
        return {r.serial_number: r.revocation_date_utc for r in crl}

    def revoke(self, device_id: str) -> int:
        """Put the device's certificate on the CRL; its serial number.

        The CRL is written anew (replacing the file in one step), signed by the
        device CA. Revoking a certificate already on it changes nothing.
        """
        validate_device_id(device_id)
        path = self.device_paths(device_id).cert
        if not path.exists():
            raise PkiError(f"device {device_id!r} has no certificate here ({path})")
        serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
        revoked = self.revoked()
        if serial not in revoked:
            revoked[serial] = dt.datetime.now(dt.UTC)
            self.write_crl(revoked)
        return serial

    def write_crl(self, revoked: Mapping[int, dt.datetime] | None = None) -> Path:
        """Sign the CRL (the entries on it now, or ``revoked``) and write it.

        nextUpdate is a year ahead: the broker's plugin takes the newest CRL it
        was given whatever its date, but OpenSSL refuses an expired one, so a
        broker configured with ``crlfile`` needs it re-signed within the year.
        """
        ca_cert, ca_key = _load_ca(self.ca_cert, self.root / "ca.key")
        entries = self.revoked() if revoked is None else revoked
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=365))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        for serial, when in sorted(entries.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        crl = builder.sign(ca_key, hashes.SHA256())
        tmp = self.crl.with_name(".crl.pem.new")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, self.crl)
        return self.crl

    def install_crl(self, folder: Path) -> Path:
        """Replace the CRL in a broker's credentials folder (in one step: the broker
        reads it again when it changes); the copy's path."""
        dest = Credentials(folder, "broker").crl
        if not folder.is_dir():
            raise PkiError(f"{folder} is not a broker's credentials folder")
        if not self.crl.exists():
            self.write_crl()
        _install(self.crl, dest, 0o644)
        return dest

    def credentials(
        self,
        process: str,
        *,
        broker: str = BROKER_SERVER,
        artifacts: str = ARTIFACT_SERVER,
        api_server: str = API_SERVER,
    ) -> dict[str, Path]:
        """What ``process`` is given: file name in its folder -> the file here.

        Its own certificate and key and the CA certificates it checks its peers
        with; never a CA key, never another process's key. ``broker`` and
        ``artifacts`` name the server certificates (servers/NAME.crt) to give.
        """
        out = Credentials(self.root, process)  # only the names are used
        if process == "broker":
            server = self.server_paths(broker)
            files = {
                out.cert: server.cert,
                out.key: server.key,
                out.service_ca: self.service_ca_cert,
                out.crl: self.crl,
            }
        elif process in SERVICE_NAMES:
            own = self.service_paths(process)
            files = {out.cert: own.cert, out.key: own.key}
            if process == "management":
                served = self.server_paths(artifacts)
                files |= {out.artifact_cert: served.cert, out.artifact_key: served.key}
                api = self.server_paths(api_server)
                files |= {out.api_cert: api.cert, out.api_key: api.key}
        else:
            raise PkiError(f"unknown process {process!r}: expected one of {', '.join(PROCESSES)}")
        files[out.ca] = self.ca_cert
        return {name.name: source for name, source in files.items()}

    def export(
        self,
        process: str,
        folder: Path,
        *,
        broker: str = BROKER_SERVER,
        artifacts: str = ARTIFACT_SERVER,
        api_server: str = API_SERVER,
    ) -> Credentials:
        """Copy ``credentials(process)`` into ``folder`` (see ``export_files``)."""
        files = self.credentials(process, broker=broker, artifacts=artifacts, api_server=api_server)
        if process == "broker" and not self.crl.exists() and self.ca_cert.exists():
            self.write_crl()  # an empty one: a PKI made before revocation existed
        # the CA certificates first: in a PKI not made yet, `init` is the command to name
        for source in sorted(files.values(), key=lambda path: path.parent != self.root):
            if not source.is_file():
                raise PkiError(f"{process} needs {source}, which does not exist: {_maker(source)}")
        export_files(files, folder)
        return Credentials(folder, process)

    def server_paths(self, name: str) -> CertPaths:
        d = self.root / "servers"
        return CertPaths(d / f"{name}.crt", d / f"{name}.key", self.ca_cert)

    def service_paths(self, name: str) -> CertPaths:
        # ``ca`` is what the service trusts for the broker: the device CA signed the server cert.
        d = self.root / "services"
        return CertPaths(d / f"{name}.crt", d / f"{name}.key", self.ca_cert)

    def device_paths(self, device_id: str) -> CertPaths:
        d = self.root / "devices" / device_id
        return CertPaths(d / "device.crt", d / "device.key", d / "ca.crt")


def _maker(path: Path) -> str:
    """The command that makes a missing PKI file, for an error message."""
    root, kind = path.parent, path.parent.name
    if kind == "servers":
        return f"run 'twelvefactor-pki server {root.parent} {path.stem} --ip ADDRESS' first"
    if kind == "services":
        return f"run 'twelvefactor-pki service {root.parent} {path.stem}' first"
    if path.name == "crl.pem":
        return f"run 'twelvefactor-pki crl {root}' first"
    return f"run 'twelvefactor-pki init {root}' first"


def _parse_time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _validity(args: argparse.Namespace) -> Validity | None:
    if args.not_before or args.not_after:
        if not (args.not_before and args.not_after):
            raise PkiError("--not-before and --not-after go together")
        if args.not_after <= args.not_before:
            raise PkiError("--not-after must be later than --not-before")
        return Validity(args.not_before, args.not_after)
    return Validity.days(args.days) if args.days is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="twelvefactor-pki", description="Certificates for broker, services and devices."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("dir", type=Path, help="PKI directory")
    common.add_argument("--days", type=int, help="validity in days from now")
    common.add_argument("--not-before", type=_parse_time, help="explicit start (ISO 8601)")
    common.add_argument("--not-after", type=_parse_time, help="explicit end (ISO 8601)")
    sub.add_parser("init", parents=[common], help="create the device CA and the service CA")
    p = sub.add_parser("server", parents=[common], help="broker server certificate")
    p.add_argument("name")
    p.add_argument("--dns", action="append", default=[], help="DNS name (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="IP address (repeatable)")
    p = sub.add_parser("service", parents=[common], help="service client certificate")
    p.add_argument("name", choices=SERVICE_NAMES)
    p = sub.add_parser("device", parents=[common], help="device client certificate")
    p.add_argument("id")
    p = sub.add_parser(
        "sign", parents=[common], help="device certificate for a device's request (CSR, PEM)"
    )
    p.add_argument("id")
    p.add_argument("request", type=Path, help="the device's certificate request (PEM)")
    p = sub.add_parser("revoke", help="put a device's certificate on the CRL (crl.pem)")
    p.add_argument("dir", type=Path, help="PKI directory")
    p.add_argument("id")
    p = sub.add_parser("crl", help="sign crl.pem again (the same entries, a new date)")
    p.add_argument("dir", type=Path, help="PKI directory")
    p = sub.add_parser(
        "export",
        help="copy what one process needs (its certificate and key, CA certificates) to a folder",
    )
    p.add_argument("dir", type=Path, help="PKI directory")
    p.add_argument("process", choices=PROCESSES)
    p.add_argument("dest", type=Path, help="the process's credentials folder (made 0700)")
    p.add_argument("--broker-cert", default=BROKER_SERVER, metavar="NAME", help="servers/NAME.crt")
    p.add_argument(
        "--artifact-cert", default=ARTIFACT_SERVER, metavar="NAME", help="servers/NAME.crt"
    )
    p.add_argument("--api-cert", default=API_SERVER, metavar="NAME", help="servers/NAME.crt")
    args = parser.parse_args(argv)
    pki = Pki(args.dir)
    if args.command in ("revoke", "crl"):
        try:
            if args.command == "revoke":
                print(f"{pki.revoke(args.id):x}")
            print(pki.write_crl() if args.command == "crl" else pki.crl)
        except PkiError as exc:
            print(f"twelvefactor-pki: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "export":
        try:
            out = pki.export(
                args.process,
                args.dest,
                broker=args.broker_cert,
                artifacts=args.artifact_cert,
                api_server=args.api_cert,
            )
        except PkiError as exc:
            print(f"twelvefactor-pki: {exc}", file=sys.stderr)
            return 2
        for name in sorted(pki.credentials(args.process)):
            print(out.folder / name)
        return 0
    try:
        validity = _validity(args)
        if args.command == "init":
            pki.init(validity)
            print(pki.ca_cert)
            print(pki.service_ca_cert)
            return 0
        if args.command == "server":
            paths = pki.server(args.name, args.dns, args.ip, validity)
        elif args.command == "service":
            paths = pki.service(args.name, validity)
        elif args.command == "sign":
            paths = pki.sign_request(args.id, args.request.read_bytes(), validity)
            print(paths.cert)
            return 0
        else:
            paths = pki.device(args.id, validity)
    except PkiError as exc:
        print(f"twelvefactor-pki: {exc}", file=sys.stderr)
        return 2
    print(paths.cert)
    print(paths.key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
