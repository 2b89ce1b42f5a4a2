"""Provision one device: its identity and tunnel configuration onto the data
partition of a copy of the image (the image itself holds no secret).

What goes onto /data (the layer's and the agent's formats):
  identity/device.crt, device.key, ca.crt   the device's TLS identity
  identity/wg.key                           its WireGuard private key
  provisioning/network.conf                 KEY=value for twelvefactor-netconfig
  config/agent.toml                         the agent's configuration
The data file system is made anew with `mkfs.ext4 -d` and written into the
copy with dd; owners are the image's own user ids, read from its /etc/passwd.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from refimage import disk, partfs
from refimage.progress import BuildError, run

AGENT_USER = "twelvefactor"
AGENT_TEMPLATE = "/etc/twelvefactor/agent.toml"
NETWORKD_GROUP = "systemd-network"


@dataclass(frozen=True)
class Identity:
    device_id: str
    certificate: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Tunnel:
    """The device's side of the WireGuard tunnel and where the services are."""

    private_key: str  # base64, from `wg genkey`
    hub_public_key: str
    hub_endpoint_address: str
    hub_endpoint_port: int
    tunnel_address: str  # e.g. 10.77.0.2/24
    service_address: str  # the hub's address inside the tunnel
    management_mqtt_port: int
    solution_mqtt_port: int
    management_https_port: int
    extra: Mapping[str, str] = field(default_factory=dict)

    def network_conf(self) -> str:
        values = {
            "HUB_ENDPOINT_ADDRESS": self.hub_endpoint_address,
            "HUB_ENDPOINT_PORT": str(self.hub_endpoint_port),
            "HUB_PUBLIC_KEY": self.hub_public_key,
            "TUNNEL_ADDRESS_V4": self.tunnel_address,
            "SERVICE_ADDRESS_V4": self.service_address,
            "MANAGEMENT_MQTT_PORT": str(self.management_mqtt_port),
            "SOLUTION_MQTT_PORT": str(self.solution_mqtt_port),
            "MANAGEMENT_HTTPS_PORT": str(self.management_https_port),
            **self.extra,
        }
        lines = ["# Written by refimage provision for this device only."]
        lines += [f"{k}={v}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


def wg_keypair() -> tuple[str, str]:
    """(private, public) WireGuard keys, base64."""
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    public = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
    ).stdout
    return private.strip(), public.strip()


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def agent_config(template: str, identity: Identity, tunnel: Tunnel) -> str:
    """The image's agent.toml with this device's id and the services inside the tunnel."""
    settings = {
        ("device", "id"): _toml_string(identity.device_id),
        ("device", "certificate"): _toml_string("/data/identity/device.crt"),
        ("device", "key"): _toml_string("/data/identity/device.key"),
        ("device", "ca"): _toml_string("/data/identity/ca.crt"),
        ("management", "host"): _toml_string(tunnel.service_address),
        ("management", "port"): str(tunnel.management_mqtt_port),
        ("solution", "host"): _toml_string(tunnel.service_address),
        ("solution", "port"): str(tunnel.solution_mqtt_port),
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
        raise BuildError(f"{AGENT_TEMPLATE} lacks the keys {missing}")
    return "\n".join(out) + "\n"


def data_tree(root: Path, image: Path, identity: Identity, tunnel: Tunnel) -> None:
    """Lay out the provisioned /data in `root` with the image's owners."""
    uid, gid = partfs.account_ids(image, AGENT_USER)
    # systemd-networkd (user systemd-network) reads the WireGuard key itself
    network_gid = partfs.group_id(image, NETWORKD_GROUP)
    template = partfs.read_text(image, "rootfs-a", AGENT_TEMPLATE)
    files: list[tuple[str, bytes, int, int, int]] = [
        # path, content, mode, uid, gid: the agent (its own group) reads its key
        ("identity/device.crt", identity.certificate.read_bytes(), 0o644, 0, 0),
        ("identity/device.key", identity.key.read_bytes(), 0o640, 0, gid),
        ("identity/ca.crt", identity.ca.read_bytes(), 0o644, 0, 0),
        ("identity/wg.key", (tunnel.private_key + "\n").encode(), 0o640, 0, network_gid),
        ("provisioning/network.conf", tunnel.network_conf().encode(), 0o644, 0, 0),
        ("config/agent.toml", agent_config(template, identity, tunnel).encode(), 0o644, 0, 0),
    ]
    root.chmod(0o755)
    for rel, content, mode, owner, group in files:
        path = root / rel
        path.parent.mkdir(mode=0o755, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
        shutil.chown(path, owner, group)
    agent_dir = root / "agent"
    agent_dir.mkdir(mode=0o750)
    shutil.chown(agent_dir, uid, gid)


def provision(image: Path, out: Path, identity: Identity, tunnel: Tunnel) -> Path:
    """A copy of `image` at `out` whose data partition holds this device's identity."""
    table = disk.read_table(image)
    if "data" not in table:
        raise BuildError(f"{image} has no partition named 'data'")
    offset, size = table["data"]
    out.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "--sparse=always", image, out])
    with tempfile.TemporaryDirectory(prefix="refimage-data-") as tmp:
        tree = Path(tmp) / "data"
        tree.mkdir()
        data_tree(tree, image, identity, tunnel)
        fs = Path(tmp) / "data.ext4"
        disk.make_ext4(tree, fs, "data", size, Path(tmp) / "mkfs.log")
        disk.write_into(out, fs, offset, size)
    return out
