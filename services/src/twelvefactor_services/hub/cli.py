"""`python -m twelvefactor_services.hub`: set up, run and provision the WireGuard hub."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from twelvefactor_services.hub.peers import PeerStore
from twelvefactor_services.hub.plan import PlanError, provisioning
from twelvefactor_services.hub.service import (
    HubError,
    Settings,
    init,
    load_settings,
    public_key,
    registry_path,
    serve_forever,
)
from twelvefactor_services.hub.stale import DEFAULT_AFTER
from twelvefactor_services.process import CommandError

PROG = "twelvefactor-hub"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="settings, WireGuard key pair and PKI in ROOT")
    p.add_argument("root", type=Path)
    p.add_argument("--tunnel-v4", required=True, help="IPv4 network, e.g. 10.99.0.0/24")
    p.add_argument("--tunnel-v6", help="the tunnel's IPv6 network, e.g. fd00:99::/64")
    p.add_argument("--listen-port", type=int, default=51820)
    p.add_argument("--management-port", type=int, default=8883)
    p.add_argument("--solution-port", type=int, default=8884)
    p.add_argument("--https-port", type=int, default=8443)
    p.add_argument(
        "--stale-after",
        type=float,
        default=DEFAULT_AFTER,
        help="seconds without a packet from a peer before the hub forgets its handshake state",
    )
    p = sub.add_parser("serve", help="run the hub in the foreground (root)")
    p.add_argument("root", type=Path)
    p.add_argument("--interface", required=True, help="WireGuard interface name to create")
    p = sub.add_parser("peer", help="register a device's WireGuard key (next free /32, /128)")
    p.add_argument("root", type=Path)
    p.add_argument("device")
    p.add_argument("public_key")
    p = sub.add_parser("remove", help="remove a device from the tunnel")
    p.add_argument("root", type=Path)
    p.add_argument("device")
    p = sub.add_parser("peers", help="list tunnel peers as JSON")
    p.add_argument("root", type=Path)
    p = sub.add_parser("provisioning", help="print a device's network.conf")
    p.add_argument("root", type=Path)
    p.add_argument("device")
    p.add_argument("--endpoint", required=True, help="the hub's address as the device reaches it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            settings = Settings(
                args.tunnel_v4,
                args.tunnel_v6,
                args.listen_port,
                args.management_port,
                args.solution_port,
                args.https_port,
                args.stale_after,
            )
            print(init(args.root, settings))
            return 0
        if args.command == "serve":
            return serve_forever(args.root, args.interface)
        settings = load_settings(args.root)
        store = PeerStore(registry_path(args.root))
        try:
            if args.command == "peer":
                peer = store.add(settings.tunnel, args.device, args.public_key)
                print(" ".join(peer.allowed_ips()))
            elif args.command == "remove":
                if not store.remove(args.device):
                    print(f"{PROG}: {args.device} is not a tunnel peer", file=sys.stderr)
                    return 1
            elif args.command == "peers":
                rows = [
                    {"device": p.device, "public_key": p.public_key, "allowed_ips": p.allowed_ips()}
                    for p in store.peers()
                ]
                print(json.dumps(rows, indent=1))
            else:
                found = store.get(args.device)
                if found is None:
                    print(f"{PROG}: {args.device} is not a tunnel peer", file=sys.stderr)
                    return 1
                sys.stdout.write(
                    provisioning(
                        found,
                        settings.tunnel,
                        hub_endpoint=args.endpoint,
                        hub_port=settings.listen_port,
                        hub_public_key=public_key(args.root),
                        ports=settings.ports,
                    )
                )
        finally:
            store.close()
    except (PlanError, HubError, CommandError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
