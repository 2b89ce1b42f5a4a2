"""Provision one device: its identity and tunnel configuration onto the data
partition of a copy of the image (the image itself holds no secret).

Two sources: the files given one by one (``provision``: a certificate and
key made elsewhere, a WireGuard key), or a /data folder that enrolment
wrote (``provision_bundle``: ``twelvefactor-agent enrol install --no-owners``
or ``twelvefactor-hub enrol --new``, docs/enrolment.md), whose private keys
are deleted once they are in the copy. network.conf and agent.toml are
rendered by the agent's one renderer (twelvefactor_agent.enrol.datafiles).

What goes onto /data (the layer's and the agent's formats):
  identity/device.crt, device.key, ca.crt   the device's TLS identity
  identity/wg.key                           its WireGuard private key
  provisioning/network.conf                 KEY=value for twelvefactor-netconfig
  config/agent.toml                         the agent's configuration
The data file system is made anew with `mkfs.ext4 -d` and written into the
copy with dd; owners are the image's own user ids, read from its /etc/passwd.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from twelvefactor_agent.enrol import datafiles
from twelvefactor_agent.enrol.datafiles import DataFileError, NetworkSettings

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
        try:
            text = NetworkSettings(
                hub_endpoint_address=self.hub_endpoint_address,
                hub_endpoint_port=self.hub_endpoint_port,
                hub_public_key=self.hub_public_key,
                tunnel_address_v4=self.tunnel_address,
                service_address_v4=self.service_address,
                management_mqtt_port=self.management_mqtt_port,
                solution_mqtt_port=self.solution_mqtt_port,
                management_https_port=self.management_https_port,
            ).network_conf("Written by refimage provision for this device only.")
        except DataFileError as exc:
            raise BuildError(str(exc)) from None
        return text + "".join(f"{k}={v}\n" for k, v in self.extra.items())


def wg_keypair() -> tuple[str, str]:
    """(private, public) WireGuard keys, base64."""
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    public = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
    ).stdout
    return private.strip(), public.strip()


def agent_config(template: str, identity: Identity, tunnel: Tunnel) -> str:
    """The image's agent.toml with this device's id and the services inside the tunnel."""
    try:
        return datafiles.agent_config(
            template,
            identity.device_id,
            tunnel.service_address,
            tunnel.management_mqtt_port,
            tunnel.solution_mqtt_port,
        )
    except DataFileError as exc:
        raise BuildError(f"{AGENT_TEMPLATE}: {exc}") from None


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


# A bundle's files (enrolment's layout, twelvefactor_agent.enrol.device), with the
# owner and mode each gets on the device: (uid or None = root, group name or None = root)
BUNDLE_FILES = {
    "identity/device.key": (0o640, AGENT_USER),
    "identity/wg.key": (0o640, NETWORKD_GROUP),
    "identity/device.crt": (0o644, None),
    "identity/ca.crt": (0o644, None),
    "identity/request.json": (0o644, None),
    "provisioning/network.conf": (0o644, None),
    "config/agent.toml": (0o644, None),
}
BUNDLE_KEYS = ("identity/device.key", "identity/wg.key")


def bundle_tree(root: Path, image: Path, bundle: Path) -> None:
    """Lay out an enrolled /data bundle in `root` with the image's owners."""
    missing = [rel for rel in BUNDLE_FILES if not (bundle / rel).is_file()]
    if missing:
        raise BuildError(
            f"{bundle} is not an enrolled /data folder: it lacks {', '.join(missing)} "
            "(twelvefactor-agent enrol install writes them)"
        )
    uid, gid = partfs.account_ids(image, AGENT_USER)
    groups = {AGENT_USER: gid, NETWORKD_GROUP: partfs.group_id(image, NETWORKD_GROUP)}
    root.chmod(0o755)
    for rel, (mode, group) in BUNDLE_FILES.items():
        path = root / rel
        path.parent.mkdir(mode=0o755, exist_ok=True)
        path.write_bytes((bundle / rel).read_bytes())
        path.chmod(mode)
        shutil.chown(path, 0, 0 if group is None else groups[group])
    agent_dir = root / "agent"
    agent_dir.mkdir(mode=0o750)
    shutil.chown(agent_dir, uid, gid)


def provision_bundle(image: Path, out: Path, bundle: Path, *, keep_keys: bool = False) -> Path:
    """A copy of `image` at `out` whose data partition holds an enrolled /data bundle.

    The bundle's private keys are deleted once the copy holds them (unless
    ``keep_keys``): a factory keeps a device's key no longer than it needs it."""
    out = _provision(image, out, lambda tree: bundle_tree(tree, image, bundle))
    if not keep_keys:
        for rel in BUNDLE_KEYS:
            (bundle / rel).unlink()
    return out


def provision(image: Path, out: Path, identity: Identity, tunnel: Tunnel) -> Path:
    """A copy of `image` at `out` whose data partition holds this device's identity."""
    return _provision(image, out, lambda tree: data_tree(tree, image, identity, tunnel))


def _provision(image: Path, out: Path, fill: Callable[[Path], None]) -> Path:
    table = disk.read_table(image)
    if "data" not in table:
        raise BuildError(f"{image} has no partition named 'data'")
    offset, size = table["data"]
    out.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "--sparse=always", image, out])
    with tempfile.TemporaryDirectory(prefix="refimage-data-") as tmp:
        tree = Path(tmp) / "data"
        tree.mkdir()
        fill(tree)
        fs = Path(tmp) / "data.ext4"
        disk.make_ext4(tree, fs, "data", size, Path(tmp) / "mkfs.log")
        disk.write_into(out, fs, offset, size)
    return out
