"""Command-line options the two services share: identity, broker, share group, logging.

A service is given its own certificate and key and the CA certificate it
checks the broker with, as files (``twelvefactor-pki export`` makes them),
never the PKI directory, which holds the CA keys (docs/pki.md).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from twelvefactor_services.mqtt import Endpoint, Identity
from twelvefactor_services.topics import share_group


def add_service_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cert", type=Path, required=True, metavar="FILE", help="the service's certificate"
    )
    parser.add_argument(
        "--key", type=Path, required=True, metavar="FILE", help="the service's private key"
    )
    parser.add_argument(
        "--ca",
        type=Path,
        required=True,
        metavar="FILE",
        help="CA certificate that signed the broker's certificate (the device CA)",
    )
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, required=True, help="the service listener")
    parser.add_argument("--instance", type=int, default=1, help="copy number n (client id)")
    parser.add_argument(
        "--share-group",
        help="shared-subscription group (default: a secret derived from the service key)",
    )
    parser.add_argument("--ready-file", type=Path, help="written once the subscription is granted")
    parser.add_argument("--log-level", default="INFO")


def require_files(service: str, files: dict[str, Path]) -> None:
    """SystemExit naming the first missing file (by its option) and the command that makes it."""
    for option, path in files.items():
        if not path.is_file():
            raise SystemExit(
                f"missing {option} {path}: make the {service} service's files with "
                f"'twelvefactor-pki export PKI {service} DIR' (docs/pki.md)"
            )


def identity(args: argparse.Namespace, service: str) -> Identity:
    require_files(service, {"--cert": args.cert, "--key": args.key, "--ca": args.ca})
    return Identity(args.cert, args.key, args.ca)


def group(args: argparse.Namespace, service: str, ident: Identity) -> str:
    return str(args.share_group) if args.share_group else share_group(service, ident.key)


def endpoint(args: argparse.Namespace) -> Endpoint:
    return Endpoint(args.broker_host, args.broker_port)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
