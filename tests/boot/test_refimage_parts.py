"""The builder's pure parts: the GRUB env block and modules, sw-description
rendering, os-release, the update kinds' input checks, the provisioned agent
configuration and network.conf (no image, no QEMU)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from helpers import require_tool
from twelvefactor_agent.device.sysinfo import parse_os_release

from refimage import grub, layer, provision, swu, system, updates
from refimage.progress import BuildError

ROOT = Path(__file__).resolve().parents[2]
GRUB_LIB = Path("/usr/lib/grub/x86_64-efi")  # grub-efi-amd64-bin: command and module lists
# oe-core's grub-efi_2.14.bb default GRUB_BUILDIN at the commit kas/base.yml pins
OE_GRUB_BUILDIN = [
    "boot",
    "linux",
    "ext2",
    "fat",
    "serial",
    "part_msdos",
    "part_gpt",
    "normal",
    "efi_gop",
    "iso9660",
    "configfile",
    "search",
    "loadenv",
    "test",
]
# GRUB script words that are no module's command, and the kernel's own commands
GRUB_KEYWORDS = {"if", "then", "elif", "else", "fi", "function", "}", "{", "!"}
GRUB_KERNEL_COMMANDS = {"set", "unset", "insmod", "ls"}


def test_env_block_is_1024_bytes_with_one_comment_line() -> None:
    block = grub.env_block(grub.INITIAL_ENV)
    assert len(block) == 1024
    lines = block.split(b"\n")
    assert [line for line in lines if line.startswith(b"#") and line != b"#" * len(line)] == [
        b"# GRUB Environment Block"
    ]
    assert grub.parse_env_block(block) == dict(grub.INITIAL_ENV)


def test_env_block_refuses_what_grub_cannot_store() -> None:
    with pytest.raises(BuildError):
        grub.env_block({"slot": "A\nB"})
    with pytest.raises(BuildError):
        grub.env_block({"x": "y" * 1100})


def test_sw_description_rendering(tmp_path: Path) -> None:
    image = tmp_path / "img.gz"
    image.write_bytes(b"payload")
    text = swu.render(
        'v = "@@V@@"; f = "@@F@@"; sha256 = "$swupdate_get_sha256(@@F@@)";',
        {"V": "1.1", "F": "img.gz"},
        {"img.gz": image},
    )
    assert text == (
        'v = "1.1"; f = "img.gz"; sha256 = '
        '"239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5";'
    )
    with pytest.raises(BuildError, match="@@MISSING@@"):
        swu.render("@@MISSING@@", {}, {})


def test_layer_template_renders_completely(tmp_path: Path) -> None:
    image = tmp_path / "rootfs.ext4.gz"
    image.write_bytes(b"x")
    values = {
        "TWELVEFACTOR_UPDATE_VERSION": "1.1",
        "MACHINE": "qemux86-64",
        "TWELVEFACTOR_HW_REVISION": "1.0",
        "TWELVEFACTOR_ROOTFS_IMAGE": image.name,
    }
    text = swu.render(swu.template(ROOT).read_text(), values, {image.name: image})
    assert "@@" not in text and "$swupdate_get_sha256" not in text
    assert "/dev/disk/by-partlabel/rootfs-b" in text


def _tunnel() -> provision.Tunnel:
    return provision.Tunnel(
        private_key="k" * 43 + "=",
        hub_public_key="h" * 43 + "=",
        hub_endpoint_address="10.0.2.2",
        hub_endpoint_port=51820,
        tunnel_address="10.77.0.2/24",
        service_address="10.77.0.1",
        management_mqtt_port=40001,
        solution_mqtt_port=40002,
        management_https_port=40003,
    )


def test_agent_config_from_the_shipped_template(tmp_path: Path) -> None:
    ident = provision.Identity("dev-042", tmp_path / "c", tmp_path / "k", tmp_path / "ca")
    template = (ROOT / "agent/config/agent.toml").read_text()
    config = tomllib.loads(provision.agent_config(template, ident, _tunnel()))
    assert config["device"]["id"] == "dev-042"
    assert config["device"]["key"] == "/data/identity/device.key"
    assert (config["management"]["host"], config["management"]["port"]) == ("10.77.0.1", 40001)
    assert (config["solution"]["host"], config["solution"]["port"]) == ("10.77.0.1", 40002)
    with pytest.raises(BuildError, match="lacks the keys"):
        provision.agent_config("[device]\nid = 'x'\n", ident, _tunnel())


def test_network_conf_has_every_required_key() -> None:
    text = _tunnel().network_conf()
    keys = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line}
    recipe = ROOT / "meta-twelvefactor/recipes-connectivity/twelvefactor-netconfig"
    netconfig = (recipe / "files/twelvefactor-netconfig").read_text()
    required = netconfig.split("REQUIRED = (", 1)[1].split(")", 1)[0]
    assert {k.strip().strip('",') for k in required.split() if k.strip('",')} <= keys


def _grub_commands(cfg: str) -> set[str]:
    """Command words of a GRUB script (first word of each statement), without its functions."""
    functions = set(re.findall(r"^\s*function\s+(\w+)", cfg, re.M))
    words: set[str] = set()
    for line in cfg.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for statement in re.split(r";|\bthen\b|\belse\b", line):
            tokens = statement.split()
            while tokens and tokens[0] in GRUB_KEYWORDS:
                tokens = tokens[1:]
            if tokens and tokens[0] not in functions | GRUB_KERNEL_COMMANDS:
                words.add(tokens[0])
    return words


def _grub_closure(modules: list[str], moddep: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    todo = list(modules)
    while todo:
        m = todo.pop()
        if m not in out:
            out.add(m)
            todo += moddep.get(m, [])
    return out


def test_every_grub_cfg_command_is_built_into_both_grubs() -> None:
    """grub.cfg's commands are in the refimage's grub-mkstandalone modules and in
    the Yocto grub-efi's GRUB_BUILDIN (oe-core's default plus the layer's append):
    a GRUB that lacks one stops at boot with "can't find command"."""
    require_tool("grub-mkstandalone")
    commands: dict[str, str] = {}
    for line in (GRUB_LIB / "command.lst").read_text().splitlines():
        name, _, module = line.partition(":")
        commands[name.lstrip("*")] = module.strip()
    moddep = {
        name: deps.split()
        for name, _, deps in (
            line.partition(":") for line in (GRUB_LIB / "moddep.lst").read_text().splitlines()
        )
    }
    cfg = layer.grub_cfg(ROOT).read_text()
    used = _grub_commands(cfg)
    unknown = sorted(c for c in used if c not in commands)
    assert unknown == [], f"grub.cfg uses commands no module provides: {unknown}"
    needed = {commands[c] for c in used}
    assert {"regexp", "search", "loadenv", "linux"} <= needed
    bbappend = (ROOT / "meta-twelvefactor/recipes-bsp/grub/grub-efi_%.bbappend").read_text()
    appended = re.search(r'GRUB_BUILDIN:append:twelvefactor = "([^"]*)"', bbappend)
    assert appended, "the layer's grub-efi append sets no GRUB_BUILDIN"
    yocto = _grub_closure(OE_GRUB_BUILDIN + appended.group(1).split(), moddep)
    refimage = _grub_closure(list(grub.GRUB_MODULES), moddep)
    assert sorted(needed - yocto) == [], "missing from the Yocto GRUB_BUILDIN"
    assert sorted(needed - refimage) == [], "missing from refimage/grub.py GRUB_MODULES"


def test_grub_cfg_finds_slots_by_partition_number() -> None:
    cfg = layer.grub_cfg(ROOT).read_text()
    assert "regexp --set=1:bootdisk" in cfg
    assert re.search(r"set root=\(\$bootdisk,\$rootpart\)", cfg)
    assert "--label --set=root" not in cfg, "a slot's root must not be found by its fs label"


def test_os_release_is_the_distro_conf_version() -> None:
    conf = (ROOT / "meta-twelvefactor/conf/distro/twelvefactor.conf").read_text()
    version = re.search(r'^DISTRO_VERSION = "([^"]+)"', conf, re.M)
    assert version
    text = system.os_release(ROOT)
    values = dict(line.split("=", 1) for line in text.splitlines())
    assert values["ID"] == "twelvefactor"
    assert values["VERSION_ID"] == version.group(1)
    assert parse_os_release(text) == {  # what the agent reports
        "id": "twelvefactor",
        "version": version.group(1),
        "pretty": f"twelvefactor {version.group(1)} (wrynose)",
    }


YOCTO_RELEASE = """\
ID=twelvefactor
NAME="twelvefactor"
VERSION="1.0 (wrynose)"
VERSION_ID=1.0
VERSION_CODENAME="wrynose"
PRETTY_NAME="twelvefactor 1.0 (wrynose)"
CPE_NAME="cpe:/o:openembedded:twelvefactor:1.0"
"""


def test_update_os_release_takes_the_new_version_everywhere() -> None:
    text = updates.os_release_with_version(YOCTO_RELEASE, "1.10.2")
    assert text == YOCTO_RELEASE.replace("1.0", "1.10.2")
    debian = 'NAME="Debian GNU/Linux"\nVERSION_ID="13"\nVERSION="13 (trixie)"\nID=debian\n'
    assert parse_os_release(updates.os_release_with_version(debian, "2.0"))["version"] == "2.0"
    assert "VERSION_ID=0.9\n" in updates.os_release_with_version("ID=x\n", "0.9")


def test_update_kind_and_version_are_checked_first(tmp_path: Path) -> None:
    image = tmp_path / "no-such.img"
    with pytest.raises(BuildError, match="unknown update kind 'evil'; one of good, broken"):
        updates.build(ROOT, image, tmp_path, kind="evil", version="1.1")
    for bad in ("1.x", "", "v1.1", "1..1", "1.1 ", "1.1;reboot", "1.2.3.4.5.6.7"):
        with pytest.raises(BuildError, match="not numbers separated by dots"):
            updates.build(ROOT, image, tmp_path, kind="good", version=bad)
    with pytest.raises(BuildError, match="no disk image"):
        updates.build(ROOT, image, tmp_path, kind="good", version="1.1")


def test_grub_cfg_never_stores_an_empty_variable() -> None:
    """SWUpdate's GRUB env parser reads `name=` as the block's padding, and its next
    write of the env then aborts the install: grub.cfg clears with `unset`."""
    cfg = layer.grub_cfg(ROOT).read_text()
    saved = set(re.findall(r"^\s*save_env --file \S+ (.*)$", cfg, re.M)[0].split())
    assert "rollback" in saved
    empty = re.findall(r"\bset (\w+)=(?=\s|;|$)", cfg, re.M)
    assert [name for name in empty if name in saved] == []


def test_swupdate_starts_on_demand_in_both_builds() -> None:
    """The layer enables only SWUpdate's socket, and the reference image turns
    off the service Debian enables, so that neither starts SWUpdate at boot,
    on a clock that may not be set yet."""
    bbappend = ROOT / "meta-twelvefactor" / "recipes-support" / "swupdate" / "swupdate_%.bbappend"
    pattern = r'^SYSTEMD_SERVICE:\$\{PN\}:twelvefactor = "([^"]*)"$'
    m = re.search(pattern, bbappend.read_text(), re.M)
    assert m is not None, "the bbappend does not set which SWUpdate units start"
    assert m.group(1).split() == ["swupdate.socket"]
    assert "swupdate.service" in system.DISABLED_UNITS
