"""The hub's tunnel peers, kept in the management database (management/store.py).

A device's WireGuard key and tunnel addresses are registry data like its
certificate's name: one table `tunnel_peers` next to the management
service's tables (the service never reads it; the hub only reads and writes
this table). A device is a tunnel peer before it ever connects, so this is
not the `devices` table, which fills on first contact.
"""

from __future__ import annotations

import ipaddress
import time

from twelvefactor_services.hub.plan import Peer, PlanError, Tunnel, allocate, check_public_key
from twelvefactor_services.management import tunnelstate
from twelvefactor_services.management.store import Db
from twelvefactor_services.pki import PkiError, validate_device_id


class PeerStore:
    def __init__(self, db: Db, shard: str | None = None) -> None:
        """`shard`: the hub whose peers these are when the fleet has several (each hub's
        WireGuard interface carries its own devices only); None: the fleet's one hub."""
        self.db = db
        self.shard = shard
        self._mine: str = "" if shard is None else " WHERE shard = ?"
        self._args: tuple[str, ...] = () if shard is None else (shard,)

    def peers(self) -> list[Peer]:
        """This hub's peers."""
        return self._peers(self._mine, self._args)

    def _peers(self, where: str, args: tuple[str, ...]) -> list[Peer]:
        rows = self.db.execute(
            f"SELECT device, public_key, address_v4, address_v6 FROM tunnel_peers{where}"
            " ORDER BY device",
            args,
        ).fetchall()
        return [
            Peer(
                device,
                key,
                ipaddress.IPv4Address(v4),
                None if v6 is None else ipaddress.IPv6Address(v6),
            )
            for device, key, v4, v6 in rows
        ]

    def get(self, device: str) -> Peer | None:
        return next((p for p in self.peers() if p.device == device), None)

    def add(self, tunnel: Tunnel, device: str, public_key: str) -> Peer:
        """Register a device's key; it gets the next free /32 (and /128). A device id, a
        key and an address are one device's in the whole fleet, every shard's peers
        included (give each shard tunnel networks of its own)."""
        try:
            validate_device_id(device)
        except PkiError as exc:
            raise PlanError(str(exc)) from None
        check_public_key(public_key)
        with self.db.write():
            existing = self._peers("", ())
            for p in existing:
                if p.device == device:
                    raise PlanError(f"{device} is already a tunnel peer ({p.address_v4})")
                if p.public_key == public_key:
                    raise PlanError(f"{p.device} already uses public key {public_key}")
            v4, v6 = allocate(tunnel, existing)
            self.db.execute(
                "INSERT INTO tunnel_peers (device, public_key, address_v4, address_v6, added,"
                " shard) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    device,
                    public_key,
                    str(v4),
                    None if v6 is None else str(v6),
                    time.time(),
                    self.shard,
                ),
            )
        return Peer(device, public_key, v4, v6)

    def record_liveness(self, device: str, alive: bool, last_rx: float) -> None:
        """Tell the management service a device's tunnel went quiet or came back."""
        tunnelstate.record(self.db, device, alive, last_rx)

    def remove(self, device: str) -> bool:
        mine = "" if self.shard is None else " AND shard = ?"
        removed = self.db.execute(
            f"DELETE FROM tunnel_peers WHERE device = ?{mine}", (device, *self._args)
        )
        return removed.rowcount > 0
