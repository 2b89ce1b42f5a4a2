"""twelvefactor-artifact: build, inspect and verify signed .swu update artifacts.

twelvefactor-artifact build ROOTFS.ext4 --version X.Y.Z --hardware BOARD=REV[,REV] ...
                      --key SIGNING.key --cert SIGNING.crt [--compress zstd|none]
                      [--template SW-DESCRIPTION] -o OUT.swu
                      [--delta-url https://HOST[:PORT]]
twelvefactor-artifact inspect FILE.swu [--json]
twelvefactor-artifact verify FILE.swu --cert SIGNING.crt

Exit status: 0 done (verify: the artifact is good); 1 the build or inspection
failed, or verify found a problem (one line per problem); 2 a usage error
(an argument the tool refuses, such as a version no device accepts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twelvefactor_services.artifact import ArtifactToolError
from twelvefactor_services.artifact import inspect as inspecting
from twelvefactor_services.artifact.build import build_delta, build_swu
from twelvefactor_services.artifact.cms import Signer
from twelvefactor_services.artifact.template import (
    COMPRESSIONS,
    Hardware,
    check_url,
    check_version,
    parse_hardware,
)
from twelvefactor_services.artifact.verify import verify

PROG = "twelvefactor-artifact"


def _version(value: str) -> str:
    try:
        return check_version(value)
    except ArtifactToolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hardware(value: str) -> Hardware:
    try:
        return parse_hardware(value)
    except ArtifactToolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _url(value: str) -> str:
    try:
        return check_url(value)
    except ArtifactToolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="\n".join(__doc__.splitlines()[2:]) if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="a signed .swu from a root file system image")
    b.add_argument("rootfs", type=Path, metavar="ROOTFS", help="ext4 image (or its .zst)")
    b.add_argument("--version", required=True, type=_version, help="dotted numbers, e.g. 1.2.3")
    b.add_argument(
        "--hardware",
        required=True,
        action="append",
        type=_hardware,
        metavar="BOARD=REV[,REV]",
        help="a board and its revisions (/etc/hwrevision); repeat for more boards",
    )
    b.add_argument("--key", required=True, type=Path, help="signing key (PEM)")
    b.add_argument("--cert", required=True, type=Path, help="its certificate (PEM)")
    b.add_argument("--compress", choices=COMPRESSIONS, default="zstd")
    b.add_argument(
        "--template",
        type=Path,
        help="sw-description template (default: the layer's, in this checkout)",
    )
    b.add_argument("-o", "--out", required=True, type=Path, help="the .swu to write")
    b.add_argument(
        "--delta-url",
        type=_url,
        metavar="https://HOST[:PORT]",
        help="also a delta .swu (OUT.delta.swu) and its chunks (OUT.zck), which the"
        " management service's artifact server at this address serves to devices",
    )
    b.add_argument(
        "--delta-template",
        type=Path,
        help="the delta's sw-description template (default: the layer's)",
    )
    i = sub.add_parser("inspect", help="version, hardware, files and signature of a .swu")
    i.add_argument("swu", type=Path, metavar="FILE.swu")
    i.add_argument("--json", action="store_true", help="one JSON object")
    v = sub.add_parser("verify", help="signature and every file's sha256")
    v.add_argument("swu", type=Path, metavar="FILE.swu")
    v.add_argument("--cert", required=True, type=Path, help="certificate the devices trust")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            built = build_swu(
                args.rootfs,
                args.out,
                version=args.version,
                hardware=args.hardware,
                signer=Signer(args.key, args.cert),
                compress=args.compress,
                template=args.template,
            )
            hardware = "; ".join(f"{hw.board} {','.join(hw.revisions)}" for hw in args.hardware)
            print(
                f"{PROG}: {built.path}: version {args.version}, hardware {hardware},"
                f" image {built.image} (sha256 {built.sha256}), signed",
                file=sys.stderr,
            )
            print(built.path)
            if args.delta_url is not None:
                stem = args.out.with_suffix("")
                delta = build_delta(
                    args.rootfs,
                    stem.with_name(stem.name + ".delta.swu"),
                    stem.with_name(stem.name + ".zck"),
                    version=args.version,
                    hardware=args.hardware,
                    signer=Signer(args.key, args.cert),
                    url=args.delta_url,
                    template=args.delta_template,
                )
                print(
                    f"{PROG}: {delta.swu}: its chunks from {delta.zck}"
                    f" (sha256 {delta.zck_sha256}), signed",
                    file=sys.stderr,
                )
                print(delta.swu)
                print(delta.zck)
        elif args.command == "inspect":
            found = inspecting.inspect(args.swu)
            print(inspecting.dumps(found) if args.json else inspecting.as_text(found))
        elif args.command == "verify":
            if not args.cert.is_file():
                parser.error(f"--cert {args.cert}: no such file")
            problems = verify(args.swu, args.cert)
            for problem in problems:
                print(f"{args.swu}: {problem}", file=sys.stderr)
            if problems:
                return 1
            print(f"{args.swu}: OK (signature by {args.cert}, every file's sha256 matches)")
    except ArtifactToolError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
