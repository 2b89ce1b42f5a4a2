"""Command line: build the image, a .swu for the other slot, a provisioned copy."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from refimage import image
from refimage.progress import BuildError, say

DEFAULT_OUT = image.TOP / "build" / "refimage"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="refimage", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or take from the cache) the reference disk image")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT, help="build and cache folder")
    b.add_argument(
        "--no-console-login",
        action="store_true",
        help="lock root (default: root logs in on the serial console without a password, "
        "for the boot tests)",
    )
    args = parser.parse_args(argv)
    began = time.monotonic()
    try:
        image.require_root()
        if args.command == "build":
            img = image.build(args.out, console_login=not args.no_console_login)
            say(f"image ready in {time.monotonic() - began:.1f} s: {img.disk}")
            print(img.disk)
    except BuildError as exc:
        print(f"refimage: {exc}", file=sys.stderr)
        return 1
    return 0
