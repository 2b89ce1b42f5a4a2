"""twelvefactor-agent: run the agent, publish or call from a shell, show status, check a config."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .client import DEFAULT_SOCKET, AgentClient, AgentError
from .config import ConfigError, load_document, parse

DEFAULT_CONFIG = Path("/data/config/agent.toml")
EXIT_CONFIG = 2


def _common() -> argparse.ArgumentParser:
    # SUPPRESS: an option given before the command is not reset by the subcommand's default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"configuration file (default {DEFAULT_CONFIG})",
    )
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["debug", "info", "warning", "error"],
        help="default info",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="twelvefactor-agent",
        parents=[common],
        description="Device agent of a twelve-factor thing. Without a command: run.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", parents=[common], help="run the agent (the default)")
    publish = sub.add_parser(
        "publish", parents=[common], help="queue stdin as one message on STREAM; prints its seq"
    )
    publish.add_argument("stream")
    publish.add_argument("--socket", type=Path, help="the agent's socket (default: from --config)")
    status = sub.add_parser("status", parents=[common], help="print the agent's status (JSON)")
    status.add_argument("--socket", type=Path, help="the agent's socket (default: from --config)")
    call = sub.add_parser(
        "call",
        parents=[common],
        help="call a third-party service by name through the solution service; "
        "prints the response body",
    )
    call.add_argument("service", help='the service\'s name, e.g. "weather"')
    call.add_argument(
        "--method", default="GET", help="GET (default), HEAD, POST, PUT, PATCH, DELETE"
    )
    call.add_argument("--path", default="/", help="path below the service's base URL")
    call.add_argument(
        "--query", action="append", default=[], metavar="NAME=VALUE", help="repeatable"
    )
    call.add_argument(
        "--header", action="append", default=[], metavar="NAME: VALUE", help="repeatable"
    )
    call.add_argument("--data", help="request body: text, @FILE, or - for stdin")
    call.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    call.add_argument(
        "--include", action="store_true", help="print the status and headers to stderr"
    )
    call.add_argument("--socket", type=Path, help="the agent's socket (default: from --config)")
    sub.add_parser(
        "check-config",
        parents=[common],
        help="validate the configuration; exit 0 if good, 2 if not",
    )
    return parser


def _socket_path(args: argparse.Namespace) -> Path:
    """--socket, else agent.socket of the configuration, else the default path.

    Only the TOML is read here (no identity file checks): a client needs no key."""
    if getattr(args, "socket", None) is not None:
        return Path(args.socket)
    path = getattr(args, "config", None)
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is None:
        return DEFAULT_SOCKET
    return parse(Path(path).read_text(encoding="utf-8")).agent.socket


EXIT_HTTP = 4  # the service answered with a status of 400 or more (body still printed)


def _call(client: AgentClient, args: argparse.Namespace) -> int:
    query: dict[str, list[str]] = {}
    for item in args.query:
        name, sep, value = item.partition("=")
        if not sep:
            raise AgentError("bad_request", f"--query {item!r}: expected NAME=VALUE")
        query.setdefault(name, []).append(value)
    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            raise AgentError("bad_request", f"--header {item!r}: expected 'NAME: VALUE'")
        headers[name.strip()] = value.strip()
    body = b""
    if args.data == "-":
        body = sys.stdin.buffer.read()
    elif args.data is not None and args.data.startswith("@"):
        body = Path(args.data[1:]).read_bytes()
    elif args.data is not None:
        body = args.data.encode()
    try:
        reply = client.call(
            args.service,
            args.method,
            args.path,
            query=query,
            headers=headers,
            body=body,
            timeout=args.timeout,
        )
    except AgentError as exc:
        status = f" (upstream status {exc.status})" if exc.status is not None else ""
        print(f"twelvefactor-agent: {exc.code}: {exc.message}{status}", file=sys.stderr)
        return 1
    if args.include:
        print(f"status {reply.status}", file=sys.stderr)
        for name, value in reply.headers.items():
            print(f"{name}: {value}", file=sys.stderr)
    sys.stdout.buffer.write(reply.body)
    sys.stdout.buffer.flush()
    return 0 if reply.status < 400 else EXIT_HTTP


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = getattr(args, "log_level", "info")
    logging.basicConfig(
        stream=sys.stderr, level=level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    command = args.command or "run"
    config_path = Path(getattr(args, "config", DEFAULT_CONFIG))
    try:
        if command in ("run", "check-config"):
            doc, config = load_document(config_path)
            if command == "check-config":
                print(f"{config_path}: ok")
                return 0
            from .agent import Agent  # only the daemon needs paho

            return Agent(config, doc).run()
        socket_path = _socket_path(args)
        with AgentClient(socket_path) as client:
            if command == "call":
                return _call(client, args)
            if command == "publish":
                print(client.publish(args.stream, sys.stdin.buffer.read()))
            else:
                print(json.dumps(client.status(), indent=2))
        return 0
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as exc:
        print(f"twelvefactor-agent: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"twelvefactor-agent: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
