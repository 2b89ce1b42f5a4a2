"""Command-line options the two services share: PKI, broker, share group, logging."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from twelvefactor_services.mqtt import Endpoint, Identity
from twelvefactor_services.pki import Pki
from twelvefactor_services.topics import share_group


def add_service_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pki", type=Path, required=True, help="PKI directory")
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, required=True, help="the service listener")
    parser.add_argument("--instance", type=int, default=1, help="copy number n (client id)")
    parser.add_argument(
        "--share-group",
        help="shared-subscription group (default: a secret derived from the service key)",
    )
    parser.add_argument("--ready-file", type=Path, help="written once the subscription is granted")
    parser.add_argument("--log-level", default="INFO")


def identity(args: argparse.Namespace, service: str) -> Identity:
    paths = Pki(args.pki).service_paths(service)
    for p in (paths.cert, paths.key, paths.ca):
        if not p.is_file():
            raise SystemExit(f"missing {p}: run 'twelvefactor-pki service {args.pki} {service}'")
    return Identity(paths.cert, paths.key, paths.ca)


def group(args: argparse.Namespace, service: str, ident: Identity) -> str:
    return str(args.share_group) if args.share_group else share_group(service, ident.key)


def endpoint(args: argparse.Namespace) -> Endpoint:
    return Endpoint(args.broker_host, args.broker_port)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
