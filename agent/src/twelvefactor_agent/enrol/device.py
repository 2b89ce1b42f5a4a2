"""The device's side of enrolment on /data: make the keys and the request, install the response.

``make_request`` makes the device's TLS key and WireGuard key on /data (mode
0600 from creation, never overwritten) and writes the request beside them;
only the request leaves the device. ``install_response`` checks the response against
those keys and writes the certificate, the CA certificate, network.conf and
agent.toml, each replaced atomically; agent.toml goes last, so a device
whose power failed half way has no configuration and the agent does not
start on half an identity (running it again finishes it).

Owners: on the device the agent (group ``twelvefactor``) reads its key and
systemd-networkd (group ``systemd-network``) the WireGuard key, so both
become 0640 with that group, the ids read from ``<etc>/group`` (``--etc``
names another root's, e.g. a mounted SD card's root file system). With
``owners=None`` (``--no-owners``: a folder on a bench that
``refimage provision --data-dir`` puts on a disk image with the image's own
ids) they stay 0600 and owned by whoever ran the command.
"""

from __future__ import annotations

import base64
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from twelvefactor_agent.enrol import der, ec
from twelvefactor_agent.enrol.bundle import EnrolError, Hardware, Request, Response, check_response
from twelvefactor_agent.enrol.datafiles import DataFileError, agent_config
from twelvefactor_agent.util.atomicfile import write_atomic

DEVICE_KEY = "identity/device.key"
WG_KEY = "identity/wg.key"
REQUEST = "identity/request.json"
DEVICE_CERT = "identity/device.crt"
CA_CERT = "identity/ca.crt"
NETWORK_CONF = "provisioning/network.conf"
AGENT_TOML = "config/agent.toml"
AGENT_DIR = "agent"
AGENT_USER = "twelvefactor"
AGENT_GROUP = "twelvefactor"
NETWORK_GROUP = "systemd-network"


@dataclass(frozen=True)
class Owners:
    """Numeric ids on the device: the agent's user and group, networkd's group."""

    agent_uid: int
    agent_gid: int
    network_gid: int

    @classmethod
    def from_etc(cls, etc: Path) -> Owners:
        users = _id_file(etc / "passwd")
        groups = _id_file(etc / "group")
        missing = [] if AGENT_USER in users else [f"user {AGENT_USER}"]
        missing += [f"group {g}" for g in (AGENT_GROUP, NETWORK_GROUP) if g not in groups]
        if missing:
            raise EnrolError(
                f"{etc} has no {', '.join(missing)}: run this on the device (or give --etc the "
                "device's /etc), or pass --no-owners and let refimage provision set the owners"
            )
        return cls(users[AGENT_USER], groups[AGENT_GROUP], groups[NETWORK_GROUP])


def _id_file(path: Path) -> dict[str, int]:
    """name -> id (third field) of /etc/passwd or /etc/group."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise EnrolError(f"cannot read {path}: {exc.strerror}") from None
    out = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            out[fields[0]] = int(fields[2])
    return out


def _write_secret(path: Path, data: bytes, group: int | None) -> None:
    """A new key file: 0600 from creation (O_EXCL: never over another key), then 0640
    to its reader's group once it is complete."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise EnrolError(f"{path} exists: refusing to overwrite a key") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        if group is not None:
            os.fchown(fd, 0, group)
            os.fchmod(fd, 0o640)
    finally:
        os.close(fd)


def _public_key_info(data: Path) -> bytes:
    try:
        private = der.private_key_from_pkcs8(
            der.unpem("PRIVATE KEY", (data / DEVICE_KEY).read_text())
        )
    except OSError as exc:
        raise EnrolError(f"no device key at {data / DEVICE_KEY}: {exc.strerror}") from None
    except der.DerError as exc:
        raise EnrolError(f"{data / DEVICE_KEY}: {exc}") from None
    return der.public_key_info(ec.public_key(private))


def _wireguard_public(data: Path) -> str:
    try:
        raw = base64.b64decode((data / WG_KEY).read_text().strip(), validate=True)
    except OSError as exc:
        raise EnrolError(f"no WireGuard key at {data / WG_KEY}: {exc.strerror}") from None
    except ValueError:
        raise EnrolError(f"{data / WG_KEY} is not a base64 WireGuard key") from None
    return base64.b64encode(ec.wireguard_public(raw)).decode()


def make_request(
    data: Path, device_id: str, hardware: Hardware | None, owners: Owners | None
) -> Request:
    """Make the keys on ``data`` and write the request there; return it.

    Again on a device that already made its keys for the same id, the request is
    made anew from them (a lost request is not a reason for new keys).
    """
    existing = data / REQUEST
    if existing.exists():
        old = Request.from_json(existing.read_bytes())
        if old.device != device_id:
            raise EnrolError(
                f"{data} holds keys made for {old.device!r}, not {device_id!r}: a device's "
                f"keys are made once (start from an empty {data / 'identity'} to enrol it anew)"
            )
    elif (data / DEVICE_KEY).exists() or (data / WG_KEY).exists():
        raise EnrolError(
            f"{data / 'identity'} holds keys but no request: it was not made by enrolment; "
            "remove the folder to start again"
        )
    else:
        _write_secret(
            data / DEVICE_KEY,
            der.pem("PRIVATE KEY", der.private_key_pkcs8(ec.new_private_key())).encode(),
            None if owners is None else owners.agent_gid,
        )
        wg = base64.b64encode(ec.new_wireguard_key()).decode()
        _write_secret(
            data / WG_KEY, (wg + "\n").encode(), None if owners is None else owners.network_gid
        )
    private = der.private_key_from_pkcs8(der.unpem("PRIVATE KEY", (data / DEVICE_KEY).read_text()))
    made = Request(
        device_id,
        der.pem("CERTIFICATE REQUEST", der.certificate_request(private, device_id)),
        _wireguard_public(data),
        hardware,
    )
    write_atomic(existing, made.to_json().encode(), 0o644)
    return made


def install_response(
    data: Path, response: Response, template: str, owners: Owners | None
) -> list[Path]:
    """Check ``response`` against this device's keys and write the files; their paths."""
    try:
        mine = Request.from_json((data / REQUEST).read_bytes())
    except OSError as exc:
        raise EnrolError(
            f"no request at {data / REQUEST} ({exc.strerror}): run 'enrol request' first"
        ) from None
    check_response(response, mine.device, _public_key_info(data), _wireguard_public(data))
    net = response.network
    try:
        toml = agent_config(
            template,
            mine.device,
            net.service_address_v4,
            net.management_mqtt_port,
            net.solution_mqtt_port,
        )
    except DataFileError as exc:
        raise EnrolError(str(exc)) from None
    files = [
        (DEVICE_CERT, response.certificate_pem),
        (CA_CERT, response.ca_pem),
        (NETWORK_CONF, net.network_conf(f"tunnel of {mine.device}, written by enrolment")),
        (AGENT_TOML, toml),  # last: its presence says the rest is in place
    ]
    written = []
    for rel, text in files:
        path = data / rel
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(path, text.encode(), 0o644)
        written.append(path)
    agent_dir = data / AGENT_DIR
    agent_dir.mkdir(mode=0o750, exist_ok=True)
    if owners is not None:
        os.chown(agent_dir, owners.agent_uid, owners.agent_gid)
    with contextlib.suppress(OSError):
        os.chmod(data, 0o755)
    return written
