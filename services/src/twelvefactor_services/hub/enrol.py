"""Enrolment and decommission on the hub: one step registers a device everywhere, one removes it.

``enrol`` takes a device's request (docs/enrolment.md: its id, a certificate
request for a key the device made, its WireGuard public key, its hardware)
and, after checking everything first: signs the certificate with the device
CA (the PKI's ``sign_request``: CN = device id, clientAuth), adds the tunnel
peer (the next free /32 and /128, as ``peer`` does), and records the device
in the management registry (hardware, fleet group, tags). A step that fails
undoes the ones before it, so a device is enrolled everywhere or nowhere.
The response carries the certificate, the CA certificate and the tunnel's
settings, nothing secret.

``enrol_new`` is the factory form for a bench without a provisioning link:
the keys are made here, by the same code the device runs, in a 0700
temporary folder, and the whole /data tree is moved to the bundle folder
(keys 0600); ``refimage provision --data-dir`` deletes the bundle's keys
once it has written them into the device's disk image.

``decommission`` revokes the certificate (crl.pem; the running hub copies it
to the broker and sends it SIGHUP at its next sync, and the broker then
disconnects and refuses the device), removes the tunnel peer (applied at the
next sync too), and marks the device retired in the registry, its history
kept. Each step is done even if an earlier run did part of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from twelvefactor_agent.enrol.bundle import EnrolError, Hardware, Request, Response
from twelvefactor_agent.enrol.device import install_response, make_request

from twelvefactor_services.hub.peers import PeerStore
from twelvefactor_services.hub.plan import PlanError, check_public_key, network_settings
from twelvefactor_services.hub.service import load_settings, public_key, registry_target
from twelvefactor_services.management.registry import (
    EnrolmentError,
    Registry,
    check_enrolment,
    enrolment,
)
from twelvefactor_services.management.store import Db
from twelvefactor_services.pki import Pki, PkiError, validate_device_id


class HubEnrolError(RuntimeError):
    """An enrolment or decommission refused; the message says why and what to do."""


def pki_of(root: Path) -> Pki:
    return Pki(root / "pki")


def enrol(
    root: Path,
    request: Request,
    *,
    endpoint: str,
    group: str | None = None,
    tags: list[str] | None = None,
    now: float | None = None,
) -> Response:
    """Register ``request``'s device everywhere it must be known; the device's response."""
    settings = load_settings(root)
    pki = pki_of(root)
    device = request.device
    db = Db(registry_target(root))
    registry, peers = Registry(db, settings.shard), PeerStore(db, settings.shard)
    try:
        # everything checked before anything is written
        try:
            validate_device_id(device)
            kept_tags = check_enrolment(registry.db, device, group, list(tags or []))
            check_public_key(request.wireguard_public_key)
        except (PkiError, EnrolmentError, PlanError) as exc:
            raise HubEnrolError(str(exc)) from None
        for peer in peers.peers():
            if peer.device == device:
                raise HubEnrolError(f"{device} is already a tunnel peer ({peer.address_v4})")
            if peer.public_key == request.wireguard_public_key:
                raise HubEnrolError(f"{peer.device} already uses this WireGuard key")
        paths = pki.device_paths(device)
        if paths.cert.exists():
            raise HubEnrolError(f"{device} already has a certificate ({paths.cert})")
        hub_key = public_key(root)

        try:
            paths = pki.sign_request(device, request.csr_pem.encode())
        except PkiError as exc:
            raise HubEnrolError(f"the device's certificate request: {exc}") from None
        try:
            peer = peers.add(settings.tunnel, device, request.wireguard_public_key)
            try:
                network = network_settings(
                    peer,
                    settings.tunnel,
                    hub_endpoint=endpoint,
                    hub_port=settings.listen_port,
                    hub_public_key=hub_key,
                    ports=settings.ports,
                )
                serial = x509.load_pem_x509_certificate(paths.cert.read_bytes()).serial_number
                registry.enrol(
                    device,
                    hardware=None if request.hardware is None else request.hardware.to_json(),
                    group=group,
                    tags=kept_tags,
                    certificate_serial=serial,
                    now=time.time() if now is None else now,
                )
            except BaseException:
                peers.remove(device)
                raise
        except BaseException:
            # never delivered: its key is on the device only, so the certificate goes
            shutil.rmtree(paths.cert.parent, ignore_errors=True)
            raise
        return Response(
            device,
            paths.cert.read_text(),
            pki.ca_cert.read_text(),
            request.wireguard_public_key,
            network,
        )
    except (PlanError, EnrolmentError) as exc:
        raise HubEnrolError(str(exc)) from None
    finally:
        db.close()


def enrol_new(
    root: Path,
    device: str,
    bundle: Path,
    *,
    endpoint: str,
    agent_template: str,
    hardware: Hardware | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
) -> Path:
    """Factory keys: make the device's keys and whole /data tree here, in ``bundle``.

    ``bundle`` must not exist. The keys are made 0600 in a 0700 temporary folder
    beside it, which becomes ``bundle`` once complete."""
    if bundle.exists():
        raise HubEnrolError(f"{bundle} exists: the bundle goes into a new folder")
    bundle.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.", dir=bundle.parent))  # 0700
    try:
        request = make_request(work, device, hardware, owners=None)
        response = enrol(root, request, endpoint=endpoint, group=group, tags=tags)
        install_response(work, response, agent_template, owners=None)
        os.rename(work, bundle)
        os.chmod(bundle, 0o700)
    except EnrolError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise HubEnrolError(str(exc)) from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return bundle


@dataclass(frozen=True)
class Decommissioned:
    device: str
    revoked_serial: str | None  # hex; None: no certificate in this PKI
    peer_removed: bool
    retired: dict[str, Any]


def decommission(root: Path, device: str, now: float | None = None) -> Decommissioned:
    """Revoke, remove the peer, retire: see the module docstring."""
    try:
        validate_device_id(device)
    except PkiError as exc:
        raise HubEnrolError(str(exc)) from None
    pki = pki_of(root)
    shard = load_settings(root).shard
    db = Db(registry_target(root))
    registry, peers = Registry(db, shard), PeerStore(db, shard)
    try:
        known = enrolment(registry.db, device)
        if known is not None and known["retired"] is not None and peers.get(device) is None:
            raise HubEnrolError(f"{device} was already decommissioned")
        has_cert = pki.device_paths(device).cert.exists()
        if known is None and not has_cert and peers.get(device) is None:
            raise HubEnrolError(f"{device} is unknown here: no certificate, peer or enrolment")
        serial = pki.revoke(device) if has_cert else None
        removed = peers.remove(device)
        if known is not None and known["retired"] is not None:
            retired = known
        else:
            retired = registry.retire(device, time.time() if now is None else now, serial)
        return Decommissioned(device, None if serial is None else f"{serial:x}", removed, retired)
    except (PkiError, EnrolmentError) as exc:
        raise HubEnrolError(str(exc)) from None
    finally:
        db.close()
