"""twelvefactor-solution: serve, or read the archive.

`archive --device ID` prints each message with its time (ISO 8601, local), seq,
stream and payload, decoded when it is printable UTF-8; `--json` prints the
archive's lines as they are.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from twelvefactor_services import service_args
from twelvefactor_services.solution import proxyconfig
from twelvefactor_services.solution.receivers import (
    ArchiveReceiver,
    Receiver,
    WebhookReceiver,
    archive_lines,
)
from twelvefactor_services.solution.store import Store


def _payload_text(payload: str) -> str:
    """A payload as text when it is printable UTF-8, else as `base64:...`."""
    raw = base64.b64decode(payload)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"base64:{payload}"
    return text if text.isprintable() else f"base64:{payload}"


def _readable(record: dict[str, object]) -> str:
    """One archived message: device time (ISO 8601, local), seq, stream, payload."""
    ts = record.get("ts")
    when = (
        dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
        if isinstance(ts, int | float)
        else "-"
    )
    payload = record.get("payload")
    text = _payload_text(payload) if isinstance(payload, str) else "-"
    return f"{when}  seq {record.get('seq')}  {record.get('stream')}  {text}"


def _archive(directory: Path, device: str | None, as_json: bool = False) -> int:
    if not directory.is_dir():
        print(f"twelvefactor-solution: no archive at {directory}", file=sys.stderr)
        return 1
    archive = ArchiveReceiver(directory)
    if device is not None:
        try:
            path = archive.path(device)
        except ValueError as exc:
            print(f"twelvefactor-solution: {exc}", file=sys.stderr)
            return 2
        if not path.exists():
            print(f"twelvefactor-solution: nothing archived for {device!r}", file=sys.stderr)
            return 1
        for line in archive_lines(path):
            sys.stdout.write(line.decode() if as_json else _readable(json.loads(line)) + "\n")
        return 0
    print(f"{'DEVICE':<24} {'MESSAGES':>8} {'FIRST SEQ':>10} {'LAST SEQ':>10}")
    for path in sorted(directory.glob("*.jsonl")):
        count, first, last = 0, None, None
        for line in archive_lines(path):
            seq = json.loads(line)["seq"]
            count += 1
            first = seq if first is None else min(first, seq)
            last = seq if last is None else max(last, seq)
        shown = ["-" if n is None else str(n) for n in (first, last)]
        print(f"{path.stem:<24} {count:>8} {shown[0]:>10} {shown[1]:>10}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twelvefactor-solution")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service in the foreground")
    service_args.add_service_args(serve)
    serve.add_argument(
        "--db",
        required=True,
        help="dedup, outbox and leases: a SQLite file's path or a postgresql:// URL",
    )
    serve.add_argument("--archive-dir", type=Path, required=True)
    serve.add_argument("--webhook", help="also POST every message to this URL")
    serve.add_argument("--webhook-timeout", type=float, default=10.0)
    serve.add_argument(
        "--subscription",
        choices=("durable", "shared"),
        default="durable",
        help="durable: each copy keeps its own persistent subscription and copies dedup "
        "against each other (safe across broker restarts with mosquitto 2.0); "
        "shared: an MQTT 5 shared subscription (for brokers that persist them)",
    )
    serve.add_argument("--max-backoff", type=float, default=30.0, help="longest retry delay (s)")
    serve.add_argument(
        "--max-attempts",
        type=int,
        default=10,
        help="refusals by a receiver before a message is set aside as a dead letter",
    )
    serve.add_argument(
        "--proxy-config",
        type=Path,
        help="TOML file naming the third-party services devices may call (docs/services.md)",
    )
    serve.add_argument("--proxy-workers", type=int, default=32, help="concurrent upstream calls")
    serve.add_argument(
        "--proxy-max-per-device", type=int, default=256, help="calls in flight from one device"
    )
    serve.add_argument(
        "--proxy-max-per-group",
        type=int,
        default=1000,
        help="calls in flight from the devices of one proxy group",
    )
    p = sub.add_parser("archive", help="per-device counts, or one device's archive")
    p.add_argument("--archive-dir", type=Path, required=True)
    p.add_argument("--device")
    p.add_argument("--json", action="store_true", help="the archive's JSON lines as they are")
    d = sub.add_parser("dead-letters", help="messages a receiver refused too often (JSON lines)")
    d.add_argument("--db", required=True, help="a SQLite file's path or a postgresql:// URL")
    args = parser.parse_args(argv)
    if args.command == "archive":
        return _archive(args.archive_dir, args.device, args.json)
    if args.command == "dead-letters":
        return _dead_letters(args.db)
    if args.max_attempts < 1:
        parser.error("--max-attempts must be at least 1")
    from twelvefactor_services.solution.service import SolutionConfig, SolutionService

    service_args.setup_logging(args.log_level)
    receivers: list[Receiver] = [ArchiveReceiver(args.archive_dir)]
    if args.webhook:
        try:
            receivers.append(WebhookReceiver(args.webhook, args.webhook_timeout))
        except ValueError as exc:
            parser.error(str(exc))
    proxy = proxyconfig.EMPTY
    if args.proxy_config is not None:
        try:
            proxy = proxyconfig.load(args.proxy_config)
        except proxyconfig.ProxyConfigError as exc:
            for problem in exc.problems:
                print(f"twelvefactor-solution: {problem}", file=sys.stderr)
            return 2
    ident = service_args.identity(args, "solution")
    cfg = SolutionConfig(
        db=args.db,
        identity=ident,
        broker=service_args.endpoint(args),
        group=(
            service_args.group(args, "solution", ident) if args.subscription == "shared" else None
        ),
        receivers=receivers,
        instance=args.instance,
        ready_file=args.ready_file,
        max_backoff=args.max_backoff,
        max_attempts=args.max_attempts,
        proxy=proxy,
        proxy_group=service_args.group(args, "solution", ident) + "-proxy",
        proxy_workers=args.proxy_workers,
        proxy_max_per_device=args.proxy_max_per_device,
        proxy_max_per_group=args.proxy_max_per_group,
    )
    return SolutionService(cfg).run()


def _dead_letters(db: str) -> int:
    if "://" not in db and not Path(db).exists():
        print(f"twelvefactor-solution: {db} does not exist", file=sys.stderr)
        return 1
    store = Store(db)
    try:
        for letter in store.dead_letters():
            print(json.dumps(letter, separators=(",", ":")))
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
