"""twelvefactor-agent: run the agent, publish or call from a shell, show status, check a config.

The daemon's own command line (`run --config PATH [--log-level LEVEL]`, as
the systemd unit gives it) is read by `run_command_line` without argparse,
and the local API client is not imported for it either: whatever the daemon
imports stays resident, and argparse alone is about 0.4 MB of its 25 MB
budget. Every other command line goes to argparse, which also explains
mistakes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from twelvefactor_agent import __version__
from twelvefactor_agent.config.settings import ConfigError, load_document, parse

if TYPE_CHECKING:
    import argparse

    from twelvefactor_agent.localapi.client import AgentClient

DEFAULT_CONFIG = Path("/data/config/agent.toml")
EXIT_CONFIG = 2
LOG_LEVELS = ("debug", "info", "warning", "error")


def run_command_line(argv: Sequence[str]) -> tuple[Path, str] | None:
    """(config path, log level) if `argv` only runs the agent, else None.

    Accepted: an optional `run` and at most one each of `--config PATH` and
    `--log-level LEVEL` (also as `--option=value`), in any order. Anything
    else, including a mistake in these, is left to argparse (None)."""
    config: str | None = None
    level: str | None = None
    seen_run = False
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "run" and not seen_run:
            seen_run = True
            continue
        name, eq, value = arg.partition("=")
        if name not in ("--config", "--log-level"):
            return None
        if not eq:
            if not rest:
                return None
            value = rest.pop(0)
        if not value or value.startswith("-"):
            return None
        if name == "--config":
            if config is not None:
                return None
            config = value
        else:
            if level is not None or value not in LOG_LEVELS:
                return None
            level = value
    return Path(config) if config is not None else DEFAULT_CONFIG, level or "info"


def _common() -> argparse.ArgumentParser:
    import argparse

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
        choices=LOG_LEVELS,
        help="default info",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    import argparse

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
    checkin = sub.add_parser(
        "checkin",
        parents=[common],
        help="a metered device checks in now (an always-on one is always in)",
    )
    checkin.add_argument("--socket", type=Path, help="the agent's socket (default: from --config)")
    sub.add_parser(
        "check-config",
        parents=[common],
        help="validate the configuration; exit 0 if good, 2 if not",
    )
    _enrol_parser(sub)
    return parser


def _enrol_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    import argparse

    enrol = sub.add_parser(
        "enrol",
        help="make this device's keys and request, install the response (docs/enrolment.md)",
    )
    steps = enrol.add_subparsers(dest="step", required=True)
    owners = argparse.ArgumentParser(add_help=False)
    owners.add_argument("--data", type=Path, default=Path("/data"), help="the data partition")
    owners.add_argument(
        "--etc", type=Path, default=Path("/etc"), help="the device's /etc (for the owners' ids)"
    )
    owners.add_argument(
        "--no-owners",
        action="store_true",
        help="keys stay 0600 with the caller's owner (a bench folder for refimage provision)",
    )
    req = steps.add_parser(
        "request", parents=[owners], help="make the keys on --data; print the request (JSON)"
    )
    req.add_argument("--device-id", required=True)
    req.add_argument(
        "--hwrevision",
        type=Path,
        help="the board and revision file (default: <etc>/hwrevision if it exists)",
    )
    req.add_argument("-o", "--output", type=Path, help="also write the request to this file")
    inst = steps.add_parser(
        "install", parents=[owners], help="check RESPONSE against the keys, write /data's files"
    )
    inst.add_argument("response", type=Path, help="the hub's response (JSON), - for stdin")
    inst.add_argument(
        "--template",
        type=Path,
        help="the image's agent.toml (default: <etc>/twelvefactor/agent.toml)",
    )


def _enrol(args: argparse.Namespace) -> int:
    """twelvefactor-agent enrol request|install (twelvefactor_agent.enrol.device)."""
    from twelvefactor_agent.enrol.bundle import EnrolError, Hardware, Response
    from twelvefactor_agent.enrol.device import Owners, install_response, make_request

    try:
        owners = None if args.no_owners else Owners.from_etc(args.etc)
        if args.step == "request":
            hw_file = args.hwrevision or args.etc / "hwrevision"
            hardware = None
            if args.hwrevision is not None or hw_file.exists():
                hardware = Hardware.parse_hwrevision(hw_file.read_text())
            made = make_request(args.data, args.device_id, hardware, owners)
            text = made.to_json()
            if args.output is not None:
                args.output.write_text(text)
            sys.stdout.write(text)
            return 0
        raw = sys.stdin.buffer.read() if str(args.response) == "-" else args.response.read_bytes()
        template = args.template or args.etc / "twelvefactor" / "agent.toml"
        for path in install_response(
            args.data, Response.from_json(raw), template.read_text(), owners
        ):
            print(path)
        return 0
    except EnrolError as exc:
        print(f"twelvefactor-agent: enrol {args.step}: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _socket_path(args: argparse.Namespace) -> Path:
    """--socket, else agent.socket of the configuration, else the default path.

    Only the TOML is read here (no identity file checks): a client needs no key."""
    if getattr(args, "socket", None) is not None:
        return Path(args.socket)
    path = getattr(args, "config", None)
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is None:
        from twelvefactor_agent.localapi.client import DEFAULT_SOCKET

        return DEFAULT_SOCKET
    return parse(Path(path).read_text(encoding="utf-8")).agent.socket


EXIT_HTTP = 4  # the service answered with a status of 400 or more (body still printed)


def _call(client: AgentClient, args: argparse.Namespace) -> int:
    from twelvefactor_agent.localapi.client import AgentError

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
    argv = sys.argv[1:] if argv is None else argv
    fast = run_command_line(argv)
    args: argparse.Namespace | None = None
    if fast is not None:
        command = "run"
        config_path, level = fast
    else:
        args = _parser().parse_args(argv)
        command = args.command or "run"
        config_path = Path(getattr(args, "config", DEFAULT_CONFIG))
        level = getattr(args, "log_level", "info")
    logging.basicConfig(
        stream=sys.stderr, level=level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if command in ("run", "check-config"):
            doc, config = load_document(config_path)
            if command == "check-config":
                print(f"{config_path}: ok")
                return 0
            from twelvefactor_agent.agent import Agent  # only the daemon needs paho

            return Agent(config, doc).run()
        assert args is not None
        if command == "enrol":
            return _enrol(args)
        return _client_command(command, args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"twelvefactor-agent: {exc}", file=sys.stderr)
        return 1


def _client_command(command: str, args: argparse.Namespace) -> int:
    """publish, status, call, checkin: one client of the local API."""
    import json

    from twelvefactor_agent.localapi.client import AgentClient, AgentError

    try:
        with AgentClient(_socket_path(args)) as client:
            if command == "call":
                return _call(client, args)
            if command == "publish":
                print(client.publish(args.stream, sys.stdin.buffer.read()))
            elif command == "checkin":
                print(json.dumps(client.checkin()))
            else:
                print(json.dumps(client.status(), indent=2))
        return 0
    except AgentError as exc:
        print(f"twelvefactor-agent: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
