"""refimage: build the reference image, .swu files, a provisioned copy.

refimage build [--out DIR] [--machine M]   the disk image (cached); prints its path
                                           (M: qemux86-64, the default, or qemuarm64)
refimage swu --out FILE [--version V]      a signed .swu of the image's root fs (either slot)
refimage updates --version V KIND... [--image IMG]
                                           test .swu files (good broken unsigned tampered
                                           other-hw), cached; prints their paths
refimage provision --image IMG --out COPY --data-dir DIR   an enrolled /data (docs/enrolment.md)
refimage provision --image IMG --out COPY --device-id ID --cert C --key K --ca CA
                   --hub-endpoint ADDR:PORT --hub-public-key KEY ...
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from refimage import image, machines, provision, swu, updates
from refimage.progress import BuildError, say, step

DEFAULT_OUT = image.TOP / "build" / "refimage"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refimage",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or take from the cache) the reference disk image")
    b.add_argument(
        "--out", type=Path, help="build and cache folder (default: build/refimage[-MACHINE])"
    )
    b.add_argument(
        "--machine",
        default=machines.DEFAULT,
        choices=sorted(machines.MACHINES),
        help="the Yocto machine the image stands in for (default %(default)s)",
    )
    b.add_argument(
        "--no-console-login",
        action="store_true",
        help="lock root (default: root logs in on the serial console without a password, "
        "for the boot tests)",
    )
    s = sub.add_parser(
        "swu", help="a signed .swu installing the image's root fs into the slot not running"
    )
    s.add_argument("--out", type=Path, required=True, help="the .swu file to write")
    s.add_argument("--build-dir", type=Path, default=DEFAULT_OUT)
    s.add_argument("--version", default="1.0", help="sw-description version")
    u = sub.add_parser("updates", help="signed (or deliberately bad) .swu files for the tests")
    u.add_argument("kinds", nargs="+", metavar="KIND", help=", ".join(updates.KINDS))
    u.add_argument("--version", required=True, help="the update's version (dotted numbers)")
    u.add_argument("--image", type=Path, help="disk image (default: the reference image)")
    u.add_argument("--build-dir", type=Path, default=DEFAULT_OUT, help="cache folder")
    p = sub.add_parser("provision", help="a copy of an image with one device's identity on /data")
    p.add_argument("--image", type=Path, required=True, help="disk image (not modified)")
    p.add_argument("--out", type=Path, required=True, help="the provisioned copy")
    p.add_argument(
        "--data-dir",
        type=Path,
        help="an enrolled /data folder (docs/enrolment.md): written as it is, its keys "
        "deleted afterwards; instead of every option below",
    )
    p.add_argument(
        "--keep-keys", action="store_true", help="with --data-dir: keep the folder's keys"
    )
    p.add_argument("--device-id")
    p.add_argument("--cert", type=Path, help="device certificate (PEM)")
    p.add_argument("--key", type=Path, help="device private key (PEM)")
    p.add_argument("--ca", type=Path, help="CA that signed the broker (PEM)")
    p.add_argument("--wg-private-key", type=Path, help="file with the device's WireGuard key")
    p.add_argument("--hub-endpoint", help="ADDRESS:PORT of the hub's WireGuard")
    p.add_argument("--hub-public-key")
    p.add_argument("--tunnel-address", default="10.77.0.2/24")
    p.add_argument("--service-address", default="10.77.0.1")
    p.add_argument("--management-port", type=int, default=8883)
    p.add_argument("--solution-port", type=int, default=8884)
    p.add_argument("--https-port", type=int, default=8443)
    return parser


def _provision(args: argparse.Namespace) -> Path:
    one_by_one = ("device_id", "cert", "key", "ca", "hub_endpoint", "hub_public_key")
    if args.data_dir is not None:
        given = [f"--{n.replace('_', '-')}" for n in one_by_one if getattr(args, n) is not None]
        if given:
            raise BuildError(f"--data-dir holds the device's files: drop {', '.join(given)}")
        with step(f"provision {args.data_dir} onto a copy of {args.image}"):
            out = provision.provision_bundle(
                args.image, args.out, args.data_dir, keep_keys=args.keep_keys
            )
        if not args.keep_keys:
            say(f"the keys in {args.data_dir}/identity are deleted: the copy holds them")
        return out
    missing = [f"--{n.replace('_', '-')}" for n in one_by_one if getattr(args, n) is None]
    if missing:
        raise BuildError(f"give --data-dir, or all of {', '.join(missing)}")
    address, sep, port = str(args.hub_endpoint).rpartition(":")
    if not sep or not port.isdigit():
        raise BuildError(f"--hub-endpoint {args.hub_endpoint!r} is not ADDRESS:PORT")
    if args.wg_private_key is not None:
        private = args.wg_private_key.read_text().strip()
    else:
        private, public = provision.wg_keypair()
        say(f"new WireGuard key pair; the device's public key: {public}")
    ident = provision.Identity(args.device_id, args.cert, args.key, args.ca)
    tunnel = provision.Tunnel(
        private_key=private,
        hub_public_key=args.hub_public_key,
        hub_endpoint_address=address.strip("[]"),
        hub_endpoint_port=int(port),
        tunnel_address=args.tunnel_address,
        service_address=args.service_address,
        management_mqtt_port=args.management_port,
        solution_mqtt_port=args.solution_port,
        management_https_port=args.https_port,
    )
    with step(f"provision {args.device_id} onto a copy of {args.image}"):
        return provision.provision(args.image, args.out, ident, tunnel)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    began = time.monotonic()
    try:
        image.require_root()
        if args.command == "build":
            out = args.out or image.default_out(args.machine)
            img = image.build(out, console_login=not args.no_console_login, machine=args.machine)
            say(f"image ready in {time.monotonic() - began:.1f} s: {img.disk}")
            print(img.disk)
        elif args.command == "swu":
            img = image.build(args.build_dir)
            with step("swu"):
                out = swu.build_swu(image.TOP, img.disk, img.rootfs, args.out, version=args.version)
            print(out)
        elif args.command == "updates":
            for kind in args.kinds:
                updates.check(kind, args.version)
            disk_image = args.image or image.build(args.build_dir).disk
            for kind in args.kinds:
                print(
                    updates.build(
                        image.TOP, disk_image, args.build_dir, kind=kind, version=args.version
                    )
                )
        elif args.command == "provision":
            print(_provision(args))
    except BuildError as exc:
        print(f"refimage: {exc}", file=sys.stderr)
        return 1
    return 0
