"""GRUB EFI binary with the layer's grub.cfg inside, and the GRUB environment block.

The env block is written here rather than with grub-editenv: grub-editenv
adds a second comment line that SWUpdate's GRUB env parser does not accept.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from refimage.progress import BuildError, run

ENV_BLOCK_SIZE = 1024
ENV_HEADER = "# GRUB Environment Block\n"

# Modules the layer's grub.cfg needs, preloaded so nothing is looked up on disk.
GRUB_MODULES = (
    "part_gpt",
    "fat",
    "ext2",
    "search",
    "search_label",
    "search_fs_file",
    "loadenv",
    "test",
    "echo",
    "linux",
    "normal",
    "configfile",
    "regexp",
    "sleep",
    "reboot",
    "halt",
    "serial",
    "terminal",
    "all_video",
    "gzio",
    "zstd",
)

INITIAL_ENV: Mapping[str, str] = {
    "slot": "A",
    "upgrade_available": "0",
    "bootcount": "0",
    "bootlimit": "3",
}


def env_block(variables: Mapping[str, str]) -> bytes:
    """The 1024-byte env block GRUB's load_env/save_env and SWUpdate both read."""
    body = ENV_HEADER
    for name, value in variables.items():
        if not name or "=" in name or "\n" in name + value:
            raise BuildError(f"grubenv: bad variable {name!r}={value!r}")
        body += f"{name}={value}\n"
    raw = body.encode()
    if len(raw) > ENV_BLOCK_SIZE:
        raise BuildError(f"grubenv: {len(raw)} bytes of variables do not fit in {ENV_BLOCK_SIZE}")
    return raw + b"#" * (ENV_BLOCK_SIZE - len(raw))


def parse_env_block(raw: bytes) -> dict[str, str]:
    """Variables of an env block (the inverse of env_block)."""
    if len(raw) != ENV_BLOCK_SIZE or not raw.startswith(ENV_HEADER.encode()):
        raise BuildError(f"not a GRUB env block ({len(raw)} bytes)")
    out: dict[str, str] = {}
    for line in raw[len(ENV_HEADER) :].decode().split("\n"):
        if line.startswith("#") or not line:
            continue
        name, sep, value = line.partition("=")
        if sep:
            out[name] = value
    return out


def make_efi(grub_cfg: Path, out: Path, log: Path) -> None:
    """BOOTX64.EFI: grub-mkstandalone with grub_cfg as the embedded /boot/grub/grub.cfg."""
    if not grub_cfg.is_file():
        raise BuildError(f"the layer's grub.cfg is missing: {grub_cfg}")
    run(
        [
            "grub-mkstandalone",
            "--format=x86_64-efi",
            f"--output={out}",
            "--locales=",
            "--fonts=",
            "--themes=",
            f"--modules={' '.join(GRUB_MODULES)}",
            f"boot/grub/grub.cfg={grub_cfg}",
        ],
        log=log,
    )
