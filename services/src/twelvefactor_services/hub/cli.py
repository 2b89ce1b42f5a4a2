"""`python -m twelvefactor_services.hub`: set up, run and provision the WireGuard hub."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import twelvefactor_agent
from twelvefactor_agent.enrol.bundle import EnrolError, Hardware, Request

from twelvefactor_services.hub.enrol import HubEnrolError, decommission, enrol, enrol_new
from twelvefactor_services.hub.peers import PeerStore
from twelvefactor_services.hub.plan import PlanError, provisioning
from twelvefactor_services.hub.service import (
    HubError,
    Settings,
    init,
    load_settings,
    public_key,
    registry_target,
    serve_forever,
)
from twelvefactor_services.hub.stale import DEFAULT_AFTER
from twelvefactor_services.management.store import Db
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
    p.add_argument(
        "--registry",
        help="the management database shared by every shard (a postgresql:// URL, or a SQLite"
        " file every hub can reach); default: management/registry.db in ROOT",
    )
    p.add_argument(
        "--shard",
        help="this hub's name among several (its devices, peers and publications); default:"
        " the fleet's only hub",
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
    p = sub.add_parser(
        "enrol",
        help="sign a device's request, add its peer, record it in the registry; "
        "write the response (or, with --new, a whole /data bundle with keys made here)",
    )
    p.add_argument("root", type=Path)
    p.add_argument("request", type=Path, nargs="?", help="the device's request (JSON), - for stdin")
    p.add_argument("--new", metavar="ID", help="factory keys: make the device's keys here")
    p.add_argument("--endpoint", required=True, help="the hub's address as the device reaches it")
    p.add_argument("--group", help="the fleet group it joins (made if new)")
    p.add_argument("--tag", action="append", default=[], help="a registry tag (repeatable)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="the response (JSON); with --new the bundle folder (must not exist)",
    )
    p.add_argument(
        "--hwrevision", help="with --new: the device's 'board revision' (its /etc/hwrevision)"
    )
    p.add_argument(
        "--agent-template",
        type=Path,
        help="with --new: the image's /etc/twelvefactor/agent.toml "
        "(default: agent/config/agent.toml of this checkout)",
    )
    p = sub.add_parser(
        "decommission",
        help="revoke the device's certificate, remove its peer, mark it retired (history kept)",
    )
    p.add_argument("root", type=Path)
    p.add_argument("device")
    p = sub.add_parser("provisioning", help="print a device's network.conf")
    p.add_argument("root", type=Path)
    p.add_argument("device")
    p.add_argument("--endpoint", required=True, help="the hub's address as the device reaches it")
    return parser


def _agent_template(given: Path | None) -> str:
    # agent/config/agent.toml beside the agent's sources: the file the recipe installs
    shipped = Path(twelvefactor_agent.__file__).resolve().parents[2] / "config" / "agent.toml"
    path = given or shipped
    if not path.is_file():
        raise HubEnrolError(
            f"no agent.toml template at {path}: pass --agent-template with the image's "
            "/etc/twelvefactor/agent.toml"
        )
    return path.read_text()


def _enrolment(args: argparse.Namespace) -> int:
    try:
        if args.command == "decommission":
            done = decommission(args.root, args.device)
            print(json.dumps(dataclasses.asdict(done), indent=1))
            return 0
        if (args.new is None) == (args.request is None):
            raise HubEnrolError("give either the device's REQUEST or --new ID")
        if args.new is not None:
            hardware = (
                None if args.hwrevision is None else Hardware.parse_hwrevision(args.hwrevision)
            )
            bundle = enrol_new(
                args.root,
                args.new,
                args.output,
                endpoint=args.endpoint,
                agent_template=_agent_template(args.agent_template),
                hardware=hardware,
                group=args.group,
                tags=args.tag,
            )
            print(bundle)
            print(
                f"{PROG}: the device's private keys are in {bundle}/identity (0600): "
                "put the bundle on the device, then delete it (refimage provision "
                "--data-dir does)",
                file=sys.stderr,
            )
            return 0
        if args.hwrevision is not None or args.agent_template is not None:
            raise HubEnrolError("--hwrevision and --agent-template go with --new only")
        raw = sys.stdin.buffer.read() if str(args.request) == "-" else args.request.read_bytes()
        response = enrol(
            args.root,
            Request.from_json(raw),
            endpoint=args.endpoint,
            group=args.group,
            tags=args.tag,
        )
        args.output.write_text(response.to_json())
        print(args.output)
        return 0
    except (HubEnrolError, EnrolError, OSError) as exc:
        print(f"{PROG}: {args.command}: {exc}", file=sys.stderr)
        return 2


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
                registry=args.registry,
                shard=args.shard,
            )
            print(init(args.root, settings))
            return 0
        if args.command == "serve":
            return serve_forever(args.root, args.interface)
        if args.command in ("enrol", "decommission"):
            return _enrolment(args)
        settings = load_settings(args.root)
        db = Db(registry_target(args.root))
        store = PeerStore(db, settings.shard)
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
            db.close()
    except (PlanError, HubError, CommandError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
