"""The enrolment request and response, and the device's checks of the response (*pure*).

The request carries only public parts: the device id, a certificate request
for the device's own key (CN = device id), its WireGuard public key and its
hardware (``/etc/hwrevision``: board and revision). The response carries
the certificate, the CA certificate the device checks the services with,
the WireGuard public key it was made for, and the tunnel's settings. A
device installs a response only if it is for this device id, its
certificate holds this device's key and names this device, and it is for
this device's WireGuard key: a response made for another request (another
device, or this device before its keys were made again) is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from twelvefactor_agent.enrol import der
from twelvefactor_agent.enrol.datafiles import DataFileError, NetworkSettings, check_wireguard_key
from twelvefactor_agent.protocol.names import DEVICE_ID_RE

REQUEST_KIND = "twelvefactor-enrolment-request"
RESPONSE_KIND = "twelvefactor-enrolment-response"
MAX_DOCUMENT = 64 * 1024
# /etc/hwrevision: "<board> <revision>", the names SWUpdate's hardware check compares.
_HW_PART = re.compile(r"[A-Za-z0-9._+-]{1,64}")


class EnrolError(ValueError):
    """A request or response that cannot be used; the message says what is wrong."""


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise EnrolError(f"invalid device id {device_id!r}: must match [a-z0-9][a-z0-9-]{{0,62}}")
    return device_id


@dataclass(frozen=True)
class Hardware:
    board: str
    revision: str

    def __post_init__(self) -> None:
        for name in ("board", "revision"):
            if not _HW_PART.fullmatch(getattr(self, name)):
                raise EnrolError(f"hardware {name} {getattr(self, name)!r}: not [A-Za-z0-9._+-]")

    @classmethod
    def parse_hwrevision(cls, text: str) -> Hardware:
        """The first line of /etc/hwrevision: ``board revision``."""
        lines = [line for line in text.splitlines() if line.strip()]
        parts = lines[0].split() if lines else []
        if len(parts) != 2:
            raise EnrolError(f"/etc/hwrevision: expected 'board revision', got {text[:80]!r}")
        return cls(parts[0], parts[1])

    def to_json(self) -> dict[str, str]:
        return {"board": self.board, "revision": self.revision}


def _load(text: str | bytes, kind: str) -> dict[str, Any]:
    if len(text) > MAX_DOCUMENT:
        raise EnrolError(f"{kind}: larger than {MAX_DOCUMENT} bytes")
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnrolError(f"{kind}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != kind or doc.get("v") != 1:
        raise EnrolError(f'not a {kind} (a JSON object with "kind": "{kind}", "v": 1)')
    return doc


def _string(doc: dict[str, Any], key: str, kind: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise EnrolError(f"{kind}: {key!r} must be a non-empty string")
    return value


@dataclass(frozen=True)
class Request:
    device: str
    csr_pem: str
    wireguard_public_key: str
    hardware: Hardware | None = None

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "kind": REQUEST_KIND,
            "v": 1,
            "device": self.device,
            "csr": self.csr_pem,
            "wireguard_public_key": self.wireguard_public_key,
            "hardware": None if self.hardware is None else self.hardware.to_json(),
        }
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Request:
        doc = _load(text, REQUEST_KIND)
        unknown = sorted(
            set(doc) - {"kind", "v", "device", "csr", "wireguard_public_key", "hardware"}
        )
        if unknown:
            raise EnrolError(f"{REQUEST_KIND}: unknown keys {unknown}")
        device = check_device_id(_string(doc, "device", REQUEST_KIND))
        csr = _string(doc, "csr", REQUEST_KIND)
        try:
            der.unpem("CERTIFICATE REQUEST", csr)
            wg = check_wireguard_key(_string(doc, "wireguard_public_key", REQUEST_KIND))
        except (der.DerError, DataFileError) as exc:
            raise EnrolError(f"{REQUEST_KIND}: {exc}") from None
        hw = doc.get("hardware")
        hardware = None
        if hw is not None:
            if not isinstance(hw, dict) or set(hw) != {"board", "revision"}:
                raise EnrolError(f"{REQUEST_KIND}: hardware must be {{board, revision}} or null")
            hardware = Hardware(str(hw["board"]), str(hw["revision"]))
        return cls(device, csr, wg, hardware)


@dataclass(frozen=True)
class Response:
    device: str
    certificate_pem: str
    ca_pem: str
    wireguard_public_key: str
    network: NetworkSettings

    def to_json(self) -> str:
        doc = {
            "kind": RESPONSE_KIND,
            "v": 1,
            "device": self.device,
            "certificate": self.certificate_pem,
            "ca": self.ca_pem,
            "wireguard_public_key": self.wireguard_public_key,
            "network": self.network.to_json(),
        }
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Response:
        doc = _load(text, RESPONSE_KIND)
        expected = {"kind", "v", "device", "certificate", "ca", "wireguard_public_key", "network"}
        if set(doc) != expected:
            raise EnrolError(f"{RESPONSE_KIND}: expected the keys {sorted(expected)}")
        try:
            return cls(
                check_device_id(_string(doc, "device", RESPONSE_KIND)),
                _string(doc, "certificate", RESPONSE_KIND),
                _string(doc, "ca", RESPONSE_KIND),
                check_wireguard_key(_string(doc, "wireguard_public_key", RESPONSE_KIND)),
                NetworkSettings.from_json(doc["network"]),
            )
        except DataFileError as exc:
            raise EnrolError(f"{RESPONSE_KIND}: {exc}") from None


def check_response(
    response: Response, device_id: str, public_key_info: bytes, wireguard_public_key: str
) -> None:
    """EnrolError unless ``response`` was made for this device's request.

    ``public_key_info`` is the DER SubjectPublicKeyInfo of the device's own key,
    ``wireguard_public_key`` its WireGuard public key (base64).
    """
    if response.device != device_id:
        raise EnrolError(f"the response is for {response.device!r}, this device is {device_id!r}")
    try:
        cn, key = der.certificate_subject_and_key(
            der.unpem("CERTIFICATE", response.certificate_pem)
        )
        der.certificate_subject_and_key(der.unpem("CERTIFICATE", response.ca_pem))
    except der.DerError as exc:
        raise EnrolError(f"the response's certificates: {exc}") from None
    if cn != device_id:
        raise EnrolError(f"the certificate names {cn!r}, not this device {device_id!r}")
    if key != public_key_info:
        raise EnrolError(
            "the certificate is for another key than this device's (a response to another "
            "request?): enrol with this device's request"
        )
    if response.wireguard_public_key != wireguard_public_key:
        raise EnrolError(
            f"the response is for WireGuard key {response.wireguard_public_key}, this device's "
            f"is {wireguard_public_key}: enrol with this device's request"
        )
