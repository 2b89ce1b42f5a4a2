"""twelvefactor-management: serve, print the registry, set desired configurations.

`config ...` writes the registry directly; a running service publishes the
change within a second (it polls for unpublished versions).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twelvefactor_services import service_args
from twelvefactor_services.management import jobstore, registry
from twelvefactor_services.management.artifacts import ArtifactError, ArtifactStore
from twelvefactor_services.management.configlogic import (
    OverlayError,
    check_device,
    check_group,
    check_overlay,
)

if TYPE_CHECKING:
    from twelvefactor_services.management.service import ArtifactServing


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


def _read_overlay(args: argparse.Namespace) -> Any:
    """The overlay from --json TEXT or --file PATH (.toml read as TOML, anything else as JSON)."""
    if args.json is not None:
        text, is_toml = args.json, False
    else:
        path = Path(args.file)
        text = sys.stdin.read() if args.file == "-" else path.read_text(encoding="utf-8")
        is_toml = path.suffix == ".toml"
    try:
        return tomllib.loads(text) if is_toml else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise OverlayError([f"not valid {'TOML' if is_toml else 'JSON'}: {exc}"]) from None


def _config(args: argparse.Namespace) -> int:
    now = time.time()
    if args.action == "show":
        db = registry.connect(args.db, readonly=True)
        if args.target == "device":
            found: Any = registry.device_config(db, check_device(args.name))
        else:
            found = (
                registry.list_groups(db)
                if args.name is None
                else registry.group_config(db, check_group(args.name))
            )
        if found is None:
            print(f"twelvefactor-management: nothing set for {args.name!r}", file=sys.stderr)
            return 1
        print(json.dumps(found, indent=2))
        return 0
    reg = registry.Registry(args.db)
    try:
        if args.target == "device":
            device = check_device(args.name)
            overlay = None if args.action == "clear" else check_overlay(_read_overlay(args))
            version = reg.set_device_config(device, overlay, now)
            print(f"{device}: desired configuration version {version}")
            return 0
        group = check_group(args.name)
        if args.action == "set":
            versions = reg.set_group_config(group, check_overlay(_read_overlay(args)), now)
        else:
            devices = [check_device(d) for d in args.devices]
            change = reg.add_members if args.action == "add" else reg.remove_members
            versions = change(group, devices, now)
        for device, version in sorted(versions.items()):
            print(f"{device}: desired configuration version {version}")
        print(f"group {group}: {len(versions)} device(s) changed")
        return 0
    except KeyError:
        print(f"twelvefactor-management: no group {args.name!r}", file=sys.stderr)
        return 1
    finally:
        reg.close()


def _store(args: argparse.Namespace) -> ArtifactStore:
    return ArtifactStore(args.artifact_dir or args.db.parent / "artifacts")


def _hardware(specs: list[str] | None) -> dict[str, list[str]] | None:
    """--hardware BOARD=REV[,REV...] (repeatable; BOARD may be empty: =REV)."""
    if not specs:
        return None
    out: dict[str, list[str]] = {}
    for spec in specs:
        board, sep, revs = spec.partition("=")
        if not sep or not revs:
            raise ArtifactError(f"--hardware {spec!r}: expected BOARD=REV[,REV...]")
        out[board] = revs.split(",")
    return out


def _artifact(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.action == "add":
        a = store.add(args.file, version=args.version, hardware=_hardware(args.hardware))
        print(json.dumps(a.to_json(), indent=2))
        return 0
    rows = store.list()
    print(f"{'SHA256':<16} {'VERSION':<12} {'SIZE':>12}  {'ADDED':<19}  HARDWARE")
    for a in rows:
        hw = " ".join(f"{b or '*'}={','.join(r)}" for b, r in a.hardware.items())
        print(f"{a.sha256[:16]} {a.version:<12} {a.size:>12}  {_ts(a.added):<19}  {hw}")
    print(f"{len(rows)} artifact(s)")
    return 0


def _job(args: argparse.Namespace) -> int:
    if args.action == "create":
        db = jobstore.connect(args.db)
        try:
            job = jobstore.create_job(
                db,
                _store(args),
                args.artifact,
                device=check_device(args.device) if args.device else None,
                group=check_group(args.group) if args.group else None,
                now=time.time(),
            )
        finally:
            db.close()
        print(json.dumps(job, indent=2))
        return 0
    db = jobstore.connect(args.db, readonly=True)
    try:
        found: Any = jobstore.list_jobs(db) if args.id is None else jobstore.get_job(db, args.id)
    finally:
        db.close()
    if found is None:
        print(f"twelvefactor-management: unknown job {args.id!r}", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2))
    return 0


def _update_parsers(sub: Any) -> None:
    art = sub.add_parser("artifact", help=".swu artifacts (stored next to the registry)")
    asub = art.add_subparsers(dest="action", required=True)
    p = asub.add_parser("add", help="store a .swu; version and hardware are read from it")
    p.add_argument("file", type=Path)
    p.add_argument("--version", help="expected version (refused if the file says otherwise)")
    p.add_argument(
        "--hardware", action="append", metavar="BOARD=REV[,REV]", help="expected compatibility"
    )
    asub.add_parser("list", help="stored artifacts")
    job = sub.add_parser("job", help="update jobs")
    jsub = job.add_subparsers(dest="action", required=True)
    p = jsub.add_parser("create", help="update a device or a group to an artifact")
    p.add_argument("--artifact", required=True, metavar="SHA256")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", metavar="ID")
    target.add_argument("--group", metavar="NAME")
    p = jsub.add_parser("show", help="one job with each device's state, or all")
    p.add_argument("id", nargs="?", metavar="JOB")
    for parser in (*asub.choices.values(), *jsub.choices.values()):
        parser.add_argument("--db", type=Path, required=True, help="registry (SQLite)")
        parser.add_argument("--artifact-dir", type=Path, help="default: artifacts/ next to --db")


def _config_parser(sub: Any) -> None:
    config = sub.add_parser("config", help="desired configuration of devices and groups")
    csub = config.add_subparsers(dest="action", required=True)

    def overlay_source(p: argparse.ArgumentParser) -> None:
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--file", help="overlay file (.toml as TOML, else JSON; - for stdin)")
        src.add_argument("--json", help="overlay as JSON text")

    p = csub.add_parser("set", help="set a device's own overlay")
    p.add_argument("name", metavar="DEVICE")
    overlay_source(p)
    p.set_defaults(target="device")
    p = csub.add_parser("clear", help="remove a device's own overlay (its group's stays)")
    p.add_argument("name", metavar="DEVICE")
    p.set_defaults(target="device", file=None, json=None)
    p = csub.add_parser("show", help="a device's desired and reported configuration")
    p.add_argument("name", metavar="DEVICE")
    p.set_defaults(target="device")
    group = csub.add_parser("group", help="group overlays and membership")
    gsub = group.add_subparsers(dest="action", required=True)
    p = gsub.add_parser("set", help="create or replace a group's overlay")
    p.add_argument("name", metavar="GROUP")
    overlay_source(p)
    p = gsub.add_parser("add", help="put devices in the group (moving them out of another)")
    p.add_argument("name", metavar="GROUP")
    p.add_argument("devices", nargs="+", metavar="DEVICE")
    p = gsub.add_parser("remove", help="take devices out of the group")
    p.add_argument("name", metavar="GROUP")
    p.add_argument("devices", nargs="+", metavar="DEVICE")
    p = gsub.add_parser("show", help="one group, or all")
    p.add_argument("name", metavar="GROUP", nargs="?")
    group.set_defaults(target="group")
    leaves = [p for name, p in csub.choices.items() if name != "group"]
    for parser in (*leaves, *gsub.choices.values()):
        parser.add_argument("--db", type=Path, required=True, help="registry (SQLite)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twelvefactor-management")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service in the foreground")
    service_args.add_service_args(serve)
    serve.add_argument("--db", type=Path, required=True, help="registry (SQLite)")
    serve.add_argument("--http-host", default="127.0.0.1")
    serve.add_argument("--http-port", type=int, default=8080)
    serve.add_argument("--artifact-dir", type=Path, help="default: artifacts/ next to --db")
    serve.add_argument("--artifact-port", type=int, help="serve artifacts over HTTPS here")
    serve.add_argument("--artifact-host", default="127.0.0.1", help="address to bind")
    serve.add_argument(
        "--artifact-url", help="base URL devices use (default https://ARTIFACT_HOST:PORT)"
    )
    serve.add_argument(
        "--artifact-cert", type=Path, metavar="FILE", help="the artifact server's certificate"
    )
    serve.add_argument(
        "--artifact-key", type=Path, metavar="FILE", help="the artifact server's private key"
    )
    serve.add_argument(
        "--device-ca",
        type=Path,
        metavar="FILE",
        help="CA certificate whose devices may download artifacts (the device CA)",
    )
    p = sub.add_parser("devices", help="list devices")
    p.add_argument("--db", type=Path, required=True)
    p = sub.add_parser("device", help="one device as JSON, with its online history")
    p.add_argument("id")
    p.add_argument("--db", type=Path, required=True)
    _config_parser(sub)
    _update_parsers(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "config":
            return _config(args)
        if args.command == "artifact":
            return _artifact(args)
        if args.command == "job":
            return _job(args)
        if args.command == "devices":
            return _devices(args.db)
        if args.command == "device":
            return _device(args.db, args.id)
    except OverlayError as exc:
        for problem in exc.problems:
            print(f"twelvefactor-management: {problem}", file=sys.stderr)
        return 2
    except (ArtifactError, jobstore.JobError) as exc:
        print(f"twelvefactor-management: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ArtifactError) else 1
    except (OSError, sqlite3.Error) as exc:
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
        artifact_dir=args.artifact_dir,
        artifacts=_serving(args),
    )
    ManagementService(cfg).run()
    return 0


def _serving(args: argparse.Namespace) -> ArtifactServing | None:
    from twelvefactor_services.management.service import ArtifactServing

    if args.artifact_port is None:
        return None
    files = {
        "--artifact-cert": args.artifact_cert,
        "--artifact-key": args.artifact_key,
        "--device-ca": args.device_ca,
    }
    if None in files.values():
        raise SystemExit("--artifact-port needs --artifact-cert, --artifact-key and --device-ca")
    service_args.require_files("management", files)
    host = f"[{args.artifact_host}]" if ":" in args.artifact_host else args.artifact_host
    url = args.artifact_url or f"https://{host}:{args.artifact_port}"
    return ArtifactServing(
        args.artifact_host,
        args.artifact_port,
        args.artifact_cert,
        args.artifact_key,
        args.device_ca,
        url,
    )


if __name__ == "__main__":
    sys.exit(main())
