"""The builder's pure parts: the GRUB env block, sw-description rendering, the
provisioned agent configuration and network.conf (no image, no QEMU)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from refimage import grub, provision, swu
from refimage.progress import BuildError

ROOT = Path(__file__).resolve().parents[2]


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
