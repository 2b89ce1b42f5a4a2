"""A device's network.conf and agent.toml: the one renderer of both.

Enrolment (``twelvefactor-agent enrol install``, the hub's factory-keys
form) and refimage's provisioning write a device's /data with these
functions, and the hub's ``provisioning`` prints network.conf with them, so
there is one format of each file. network.conf is the layer's ``KEY=value``
file read by ``twelvefactor-netconfig``; agent.toml is the image's
``/etc/twelvefactor/agent.toml`` with the device's id and the services'
tunnel address and ports put in, every other line (and comment) kept.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import asdict, dataclass
from typing import Any

# What every device's agent.toml points at: the identity files on /data.
DEVICE_CERT = "/data/identity/device.crt"
DEVICE_KEY = "/data/identity/device.key"
DEVICE_CA = "/data/identity/ca.crt"
AGENT_TEMPLATE = "/etc/twelvefactor/agent.toml"


class DataFileError(ValueError):
    """A value that cannot go into a device's files; the message names it."""


def check_wireguard_key(text: str, what: str = "WireGuard key") -> str:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise DataFileError(f"{what} {text!r} is not base64") from None
    if len(raw) != 32:
        raise DataFileError(f"{what} {text!r} is {len(raw)} bytes, a WireGuard key is 32")
    return text


def _port(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise DataFileError(f"{name}: {value!r} is not a port (1-65535)")
    return value


def _address(name: str, value: object, *, prefix: bool) -> str:
    if not isinstance(value, str):
        raise DataFileError(f"{name}: {value!r} is not an address")
    try:
        if prefix:
            ipaddress.ip_interface(value)
            if "/" not in value:
                raise ValueError("no prefix length")
        else:
            ipaddress.ip_address(value)
    except ValueError as exc:
        raise DataFileError(f"{name}: {value!r} is not an address: {exc}") from None
    return value


@dataclass(frozen=True)
class NetworkSettings:
    """The device's side of the tunnel and where the services are inside it."""

    hub_endpoint_address: str  # the hub's underlay address, as the device reaches it
    hub_endpoint_port: int
    hub_public_key: str
    tunnel_address_v4: str  # the device's /32 with the tunnel's prefix, e.g. 10.99.0.2/24
    service_address_v4: str  # the hub's address inside the tunnel
    management_mqtt_port: int
    solution_mqtt_port: int
    management_https_port: int
    tunnel_address_v6: str | None = None
    service_address_v6: str | None = None

    def __post_init__(self) -> None:
        _address("hub_endpoint_address", self.hub_endpoint_address, prefix=False)
        check_wireguard_key(self.hub_public_key, "hub_public_key")
        _address("tunnel_address_v4", self.tunnel_address_v4, prefix=True)
        _address("service_address_v4", self.service_address_v4, prefix=False)
        for name in ("hub_endpoint_port", "management_mqtt_port", "solution_mqtt_port"):
            _port(name, getattr(self, name))
        _port("management_https_port", self.management_https_port)
        if (self.tunnel_address_v6 is None) != (self.service_address_v6 is None):
            raise DataFileError("tunnel_address_v6 and service_address_v6 go together")
        if self.tunnel_address_v6 is not None:
            _address("tunnel_address_v6", self.tunnel_address_v6, prefix=True)
            _address("service_address_v6", self.service_address_v6, prefix=False)

    @classmethod
    def from_json(cls, data: object) -> NetworkSettings:
        if not isinstance(data, dict):
            raise DataFileError("network: expected an object")
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - names)
        if unknown:
            raise DataFileError(f"network: unknown keys {unknown}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise DataFileError(f"network: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def network_conf(self, header: str) -> str:
        """/data/provisioning/network.conf."""
        values = {
            "HUB_ENDPOINT_ADDRESS": self.hub_endpoint_address,
            "HUB_ENDPOINT_PORT": str(self.hub_endpoint_port),
            "HUB_PUBLIC_KEY": self.hub_public_key,
            "TUNNEL_ADDRESS_V4": self.tunnel_address_v4,
            "SERVICE_ADDRESS_V4": self.service_address_v4,
            "MANAGEMENT_MQTT_PORT": str(self.management_mqtt_port),
            "SOLUTION_MQTT_PORT": str(self.solution_mqtt_port),
            "MANAGEMENT_HTTPS_PORT": str(self.management_https_port),
        }
        if self.tunnel_address_v6 is not None and self.service_address_v6 is not None:
            values["TUNNEL_ADDRESS_V6"] = self.tunnel_address_v6
            values["SERVICE_ADDRESS_V6"] = self.service_address_v6
        lines = [f"# {line}" for line in header.splitlines()]
        lines += [f"{k}={v}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def agent_config(
    template: str,
    device_id: str,
    service_address: str,
    management_port: int,
    solution_port: int,
) -> str:
    """The image's agent.toml with this device's id and the services inside the tunnel."""
    settings = {
        ("device", "id"): _toml_string(device_id),
        ("device", "certificate"): _toml_string(DEVICE_CERT),
        ("device", "key"): _toml_string(DEVICE_KEY),
        ("device", "ca"): _toml_string(DEVICE_CA),
        ("management", "host"): _toml_string(service_address),
        ("management", "port"): str(_port("management port", management_port)),
        ("solution", "host"): _toml_string(service_address),
        ("solution", "port"): str(_port("solution port", solution_port)),
    }
    section = ""
    seen: set[tuple[str, str]] = set()
    out = []
    for line in template.splitlines():
        head = re.match(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$", line)
        if head:
            section = head.group(1)
        kv = re.match(r"^(\s*)([A-Za-z0-9_-]+)(\s*=\s*)", line)
        if kv and (section, kv.group(2)) in settings:
            key = (section, kv.group(2))
            line = f"{kv.group(1)}{kv.group(2)}{kv.group(3)}{settings[key]}"
            seen.add(key)
        out.append(line)
    missing = sorted(set(settings) - seen)
    if missing:
        raise DataFileError(f"the agent.toml template lacks the keys {missing}")
    return "\n".join(out) + "\n"
