"""The A/B boot environment: GRUB's environment block, or U-Boot's via fw_*env.

A GRUB environment block is exactly 1024 bytes: the header line
`# GRUB Environment Block\\n`, then `key=value\\n` lines, padded with `#`.
It is written here with that one comment line only: grub-editenv adds a
second one, which SWUpdate's GRUB parser misreads. Parsing and serialising
are pure; `write_atomic` replaces the file safely (temp file, fsync, rename,
fsync of the directory), so a power cut leaves the old or the new block.

Variables of the A/B scheme: `slot` (A|B), `upgrade_available` (0|1),
`bootcount` and `bootlimit` (3). `twelvefactor-bootenv confirm` marks the
running slot good: upgrade_available=0, bootcount=0; `twelvefactor-bootenv
slot` prints the running slot, from the kernel command line.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from twelvefactor_agent.util.atomicfile import write_atomic

HEADER = b"# GRUB Environment Block\n"
SIZE = 1024
DEFAULT_GRUBENV = Path("/boot/grub/grubenv")
FW_ENV_CONFIG = Path("/etc/fw_env.config")
KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CMDLINE = Path("/proc/cmdline")
SLOT_PARAMETER = "twelvefactor.slot"  # the bootloader's script puts the slot it booted there

# Allowed values of the A/B variables; other keys are free-form.
AB_VALUES: dict[str, re.Pattern[str]] = {
    "slot": re.compile(r"[AB]"),
    "upgrade_available": re.compile(r"[01]"),
    "bootcount": re.compile(r"0|[1-9][0-9]{0,8}"),
    "bootlimit": re.compile(r"[1-9][0-9]{0,8}"),
}


class BootEnvError(Exception):
    pass


def _check_storable(key: str, value: str) -> None:
    if not KEY_RE.fullmatch(key):
        raise BootEnvError(f"bootenv: {key!r} is not a variable name")
    if "\n" in value or "\\" in value or "\x00" in value:
        raise BootEnvError(f"bootenv: {key}: value may not hold newlines, backslashes or NUL")


def check(key: str, value: str) -> None:
    """Refuse a variable that cannot be stored, or a wrong value of an A/B variable."""
    _check_storable(key, value)
    pattern = AB_VALUES.get(key)
    if pattern is not None and not pattern.fullmatch(value):
        raise BootEnvError(f"bootenv: {key}: {value!r} is not allowed ({pattern.pattern})")


def parse(block: bytes) -> dict[str, str]:
    """Variables of a GRUB environment block, in file order."""
    if len(block) != SIZE:
        raise BootEnvError(f"grubenv: expected {SIZE} bytes, got {len(block)}")
    if not block.startswith(HEADER):
        raise BootEnvError("grubenv: no '# GRUB Environment Block' header")
    *lines, padding = block[len(HEADER) :].split(b"\n")
    if padding.strip(b"#"):
        raise BootEnvError("grubenv: padding after the last variable is not '#'")
    env: dict[str, str] = {}
    for number, raw in enumerate(lines, start=2):
        if raw.startswith(b"#"):
            continue  # grub-editenv's extra comment: read, never written
        try:
            line = raw.decode()
        except UnicodeDecodeError as exc:
            raise BootEnvError(f"grubenv: line {number} is not UTF-8") from exc
        key, sep, value = line.partition("=")
        if not sep or not KEY_RE.fullmatch(key):
            raise BootEnvError(f"grubenv: line {number} is not key=value: {line[:40]!r}")
        if key in env:
            raise BootEnvError(f"grubenv: {key} is set twice")
        env[key] = value
    return env


def serialise(env: Mapping[str, str]) -> bytes:
    """The 1024-byte block holding `env`, with a single comment line.

    An empty value unsets the variable, as GRUB's `unset` does: SWUpdate's
    parser reads `key=` followed by the padding as a value and then overflows
    the block on its next write (an aborted install).
    """
    body = bytearray(HEADER)
    for key, value in env.items():
        _check_storable(key, value)
        if value:
            body += f"{key}={value}\n".encode()
    if len(body) > SIZE:
        raise BootEnvError(f"grubenv: {len(body)} bytes of variables do not fit in {SIZE}")
    return bytes(body) + b"#" * (SIZE - len(body))


def read(path: Path) -> dict[str, str]:
    try:
        return parse(path.read_bytes())
    except OSError as exc:
        raise BootEnvError(f"grubenv: cannot read {path}: {exc.strerror}") from exc


def running_slot(cmdline: str) -> str:
    """The slot this boot runs: the last `twelvefactor.slot=` on the kernel
    command line (a repeated parameter, as the kernel takes its own: a
    bootloader that appends to what firmware passed has the last word), A or B.

    The one reader of the running slot: the agent, the confirm and reboot
    scripts and SWUpdate's selection script all go through it
    (`twelvefactor-bootenv slot`), so they cannot disagree."""
    prefix = f"{SLOT_PARAMETER}="
    values = [word[len(prefix) :] for word in cmdline.split() if word.startswith(prefix)]
    if not values:
        raise BootEnvError(f"bootenv: no {prefix} on the kernel command line")
    if AB_VALUES["slot"].fullmatch(values[-1]) is None:
        raise BootEnvError(
            f"bootenv: {prefix}{values[-1]} on the kernel command line is not A or B"
        )
    return values[-1]


def parse_fw_printenv(text: str) -> dict[str, str]:
    """Variables from `fw_printenv` output (`key=value` lines)."""
    env = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    return env


def boot_info(env: Mapping[str, str]) -> dict[str, object]:
    """The `boot` object of the meta message (docs/protocol.md)."""
    count = env.get("bootcount")
    upgrade = env.get("upgrade_available")
    return {
        "slot": env.get("slot"),
        "bootcount": int(count) if count is not None and count.isdigit() else None,
        "upgrade_available": None if upgrade is None else upgrade == "1",
        # set by the bootloader when a new slot used up its attempts and it fell back
        "rollback": env.get("rollback") or None,
    }


class Backend:
    """Where the environment lives: a GRUB block file, or U-Boot through fw_*env."""

    def get_all(self) -> dict[str, str]:
        raise NotImplementedError

    def update(self, changes: Mapping[str, str]) -> None:
        raise NotImplementedError


class GrubBackend(Backend):
    def __init__(self, path: Path) -> None:
        self.path = path

    def get_all(self) -> dict[str, str]:
        return read(self.path)

    def update(self, changes: Mapping[str, str]) -> None:
        env = read(self.path)
        env.update(changes)
        self.replace(env)

    def replace(self, env: Mapping[str, str]) -> None:
        """Write the whole block (the old one is not read: it may be unreadable)."""
        try:
            write_atomic(self.path, serialise(env))
        except OSError as exc:
            raise BootEnvError(f"grubenv: cannot write {self.path}: {exc.strerror}") from exc


class UbootBackend(Backend):
    def get_all(self) -> dict[str, str]:
        done = _run(["fw_printenv"])
        return parse_fw_printenv(done)

    def update(self, changes: Mapping[str, str]) -> None:
        for key, value in changes.items():
            _run(["fw_setenv", key, value])


def _run(argv: list[str]) -> str:
    import subprocess  # U-Boot machines only; the agent imports this module at start

    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BootEnvError(f"bootenv: {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise BootEnvError(f"bootenv: {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def read_boot_env(grubenv: Path = DEFAULT_GRUBENV) -> dict[str, str] | None:
    """What the bootloader environment says, or None off-device or when unreadable."""
    try:
        if grubenv.exists():
            return read(grubenv)
        if shutil.which("fw_printenv") and FW_ENV_CONFIG.exists():
            return UbootBackend().get_all()
    except (BootEnvError, OSError):
        # Unreadable (permissions, a broken ESP): metadata says null, the agent goes on.
        return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    import argparse  # the command line only: the agent imports this module too

    parser = argparse.ArgumentParser(
        prog="twelvefactor-bootenv", description="Read and change the A/B boot environment."
    )
    parser.add_argument(
        "--file",
        type=Path,
        help=f"GRUB environment block (default {DEFAULT_GRUBENV}; "
        f"U-Boot's fw_printenv/fw_setenv are used instead when {FW_ENV_CONFIG} exists)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("get", help="print all variables, or the value of one")
    get.add_argument("key", nargs="?")
    put = sub.add_parser("set", help="set variables")
    put.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    confirm = sub.add_parser(
        "confirm",
        help="mark the running slot good: upgrade_available=0 bootcount=0 (and ustate=0 if set)",
    )
    confirm.add_argument("--cmdline", type=Path, default=CMDLINE, help=f"default {CMDLINE}")
    slot = sub.add_parser("slot", help="print the slot this boot runs (A or B)")
    slot.add_argument("--cmdline", type=Path, default=CMDLINE, help=f"default {CMDLINE}")
    args = parser.parse_args(argv)
    if args.command == "slot":
        try:
            print(running_slot(args.cmdline.read_text(encoding="utf-8", errors="replace")))
        except OSError as exc:
            print(f"bootenv: cannot read {args.cmdline}: {exc.strerror}", file=sys.stderr)
            return 2
        except BootEnvError as exc:
            print(exc, file=sys.stderr)
            return 2
        return 0

    backend: Backend
    if args.file is None and FW_ENV_CONFIG.exists():
        backend = UbootBackend()
    else:
        backend = GrubBackend(args.file or DEFAULT_GRUBENV)
    try:
        if args.command == "get":
            env = backend.get_all()
            if args.key is None:
                for key, value in env.items():
                    print(f"{key}={value}")
            elif args.key in env:
                print(env[args.key])
            else:
                print(f"bootenv: {args.key} is not set", file=sys.stderr)
                return 1
        elif args.command == "set":
            changes = {}
            for item in args.assignments:
                key, sep, value = item.partition("=")
                if not sep:
                    raise BootEnvError(f"bootenv: {item!r} is not KEY=VALUE")
                check(key, value)
                changes[key] = value
            backend.update(changes)
        else:
            confirmed = {"upgrade_available": "0", "bootcount": "0"}
            try:
                env = backend.get_all()
            except BootEnvError as exc:
                if not isinstance(backend, GrubBackend):
                    raise
                # A power cut while the environment was written on the FAT partition
                # can leave it unreadable (fsck repairs the file system, not the
                # block). GRUB then boots on its defaults; confirming means writing
                # an environment for the slot that is running and healthy.
                try:
                    cmdline = args.cmdline.read_text(encoding="utf-8", errors="replace")
                except OSError as err:
                    raise BootEnvError(f"{exc}; and {args.cmdline}: {err.strerror}") from err
                try:
                    running = running_slot(cmdline)
                except BootEnvError as err:  # no slot to confirm: leave it to GRUB
                    raise BootEnvError(f"{exc}; {err}") from err
                fresh = {"slot": running, **confirmed, "bootlimit": "3"}
                print(f"{exc}: writing a new one for slot {fresh['slot']}", file=sys.stderr)
                backend.replace(fresh)
                return 0
            # SWUpdate's bootloader state marker (ustate=1, "installed") outlives the
            # update it marked unless cleared here: the next update must start clean.
            if env.get("ustate", "0") != "0":
                confirmed["ustate"] = "0"
            # Only write when something changes: the environment lives on flash.
            if any(env.get(k) != v for k, v in confirmed.items()):
                backend.update(confirmed)
    except BootEnvError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
