"""twelvefactor-management: serve, or print the registry."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from twelvefactor_services import service_args
from twelvefactor_services.management import registry


def _ts(value: float | None) -> str:
    return "-" if value is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _devices(db_path: Path) -> int:
    db = registry.connect(db_path, readonly=True)
    rows = registry.list_devices(db)
    print(f"{'DEVICE':<24} {'STATE':<8} {'SINCE':<19}  {'LAST HEALTH':<19}")
    for r in rows:
        state = {True: "online", False: "offline", None: "unknown"}[r["online"]]
        print(f"{r['id']:<24} {state:<8} {_ts(r['last_online_change']):<19}  {_ts(r['health_ts'])}")
    print(f"{len(rows)} device(s)")
    return 0


def _device(db_path: Path, device: str) -> int:
    db = registry.connect(db_path, readonly=True)
    found = registry.get_device(db, device)
    if found is None:
        print(f"twelvefactor-management: unknown device {device!r}", file=sys.stderr)
        return 1
    found["history"] = registry.history(db, device)
    print(json.dumps(found, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twelvefactor-management")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service in the foreground")
    service_args.add_service_args(serve)
    serve.add_argument("--db", type=Path, required=True, help="registry (SQLite)")
    serve.add_argument("--http-host", default="127.0.0.1")
    serve.add_argument("--http-port", type=int, default=8080)
    p = sub.add_parser("devices", help="list devices")
    p.add_argument("--db", type=Path, required=True)
    p = sub.add_parser("device", help="one device as JSON, with its online history")
    p.add_argument("id")
    p.add_argument("--db", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "devices":
            return _devices(args.db)
        if args.command == "device":
            return _device(args.db, args.id)
    except (FileNotFoundError, sqlite3.Error) as exc:
        print(f"twelvefactor-management: {exc}", file=sys.stderr)
        return 1
    from twelvefactor_services.management.service import ManagementConfig, ManagementService

    service_args.setup_logging(args.log_level)
    ident = service_args.identity(args, "management")
    cfg = ManagementConfig(
        db=args.db,
        identity=ident,
        broker=service_args.endpoint(args),
        group=service_args.group(args, "management", ident),
        instance=args.instance,
        http_host=args.http_host,
        http_port=args.http_port,
        ready_file=args.ready_file,
    )
    ManagementService(cfg).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
