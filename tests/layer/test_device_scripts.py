"""The layer's device scripts, run on the host: the network renderer, the
SWUpdate selection and the GRUB script syntax."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import require_root, require_tool

from refimage import layer_files as lf

NETCONFIG = lf.LAYER / "recipes-connectivity/twelvefactor-netconfig/files"
RULESET = lf.LAYER / "recipes-connectivity/twelvefactor-firewall/files/twelvefactor.nft"
# the selection script runs the agent's twelvefactor-bootenv, installed beside this Python
AGENT_ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
SELECTION = lf.LAYER / "recipes-support/swupdate/files/twelvefactor-swupdate-selection"
GRUB_CFG = lf.LAYER / "recipes-bsp/twelvefactor-boot-grub/files/grub.cfg"
HUB_KEY = "x" * 43 + "="  # 32 bytes of base64

PROVISIONING = f"""# test device
HUB_ENDPOINT_ADDRESS=192.0.2.10
HUB_ENDPOINT_PORT=51820
HUB_PUBLIC_KEY={HUB_KEY}
TUNNEL_ADDRESS_V4=10.77.0.5/24
TUNNEL_ADDRESS_V6=fd77::5/64
SERVICE_ADDRESS_V4=10.77.0.1
SERVICE_ADDRESS_V6=fd77::1
MANAGEMENT_MQTT_PORT=8883
SOLUTION_MQTT_PORT=8884
MANAGEMENT_HTTPS_PORT=8443
"""


def _netconfig(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    prov = tmp_path / "network.conf"
    prov.write_text(text)
    return subprocess.run(
        [
            sys.executable,
            str(NETCONFIG / "twelvefactor-netconfig"),
            "--provisioning",
            str(prov),
            "--templates",
            str(NETCONFIG),
            "--root",
            str(tmp_path / "root"),
            "--print-nft",
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def test_netconfig_renders_tunnel_and_time(tmp_path: Path) -> None:
    done = _netconfig(tmp_path, PROVISIONING)
    assert done.returncode == 0, done.stderr
    root = tmp_path / "root"
    netdev = (root / "run/systemd/network/50-twelvefactor-tunnel.netdev").read_text()
    assert "Endpoint=192.0.2.10:51820" in netdev
    assert f"PublicKey={HUB_KEY}" in netdev
    assert "PrivateKeyFile=/data/identity/wg.key" in netdev
    assert "AllowedIPs=10.77.0.1/32, fd77::1/128" in netdev
    network = (root / "run/systemd/network/50-twelvefactor-tunnel.network").read_text()
    assert "Address=10.77.0.5/24\nAddress=fd77::5/64" in network
    timesync = (root / "run/systemd/timesyncd.conf.d/50-twelvefactor.conf").read_text()
    assert "NTP=10.77.0.1 fd77::1" in timesync
    assert "@" not in netdev + network + timesync


def test_netconfig_sets_load_into_the_ruleset(tmp_path: Path) -> None:
    require_root()
    nft = require_tool("nft")
    done = _netconfig(tmp_path, PROVISIONING)
    assert done.returncode == 0, done.stderr
    assert "add element inet twelvefactor services_v4 { 10.77.0.1 . 8443, " in done.stdout
    combined = tmp_path / "combined.nft"
    combined.write_text(RULESET.read_text() + done.stdout)
    checked = subprocess.run(
        [nft, "-c", "-f", str(combined)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("HUB_ENDPOINT_PORT=51820", "HUB_ENDPOINT_PORT=70000"), "HUB_ENDPOINT_PORT"),
        (("SERVICE_ADDRESS_V4=10.77.0.1", "SERVICE_ADDRESS_V4=fd77::1"), "IPv4"),
        ((f"HUB_PUBLIC_KEY={HUB_KEY}", "HUB_PUBLIC_KEY=abc"), "HUB_PUBLIC_KEY"),
        (("MANAGEMENT_MQTT_PORT=8883\n", ""), "missing MANAGEMENT_MQTT_PORT"),
        (("# test device", "BOGUS=1"), "unknown key BOGUS"),
    ],
)
def test_netconfig_rejects_bad_provisioning(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    done = _netconfig(tmp_path, PROVISIONING.replace(*change))
    assert done.returncode == 1
    assert message in done.stderr
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize(
    ("cmdline", "selection"),
    [
        ("ro twelvefactor.slot=A panic=5", "stable,copy2"),
        ("twelvefactor.slot=B root=PARTLABEL=rootfs-b", "stable,copy1"),
    ],
)
def test_selection_installs_to_the_other_slot(tmp_path: Path, cmdline: str, selection: str) -> None:
    path = tmp_path / "cmdline"
    path.write_text(cmdline + "\n")
    done = subprocess.run(
        ["sh", str(SELECTION), str(path)], capture_output=True, text=True, check=True, env=AGENT_ENV
    )
    assert done.stdout.strip() == selection


@pytest.mark.parametrize(
    ("cmdline", "message"),
    [
        ("ro quiet", "no twelvefactor.slot="),
        ("twelvefactor.slot=C", "twelvefactor.slot=C on the kernel command line is not A or B"),
    ],
)
def test_selection_refuses_unknown_slot(tmp_path: Path, cmdline: str, message: str) -> None:
    path = tmp_path / "cmdline"
    path.write_text(cmdline + "\n")
    done = subprocess.run(
        ["sh", str(SELECTION), str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=AGENT_ENV,
    )
    assert done.returncode == 1
    assert message in done.stderr, done.stderr
    assert done.stdout == ""


def test_grub_script_syntax() -> None:
    check = require_tool("grub-script-check")
    subprocess.run([check, str(GRUB_CFG)], check=True)


def test_initial_grubenv_is_one_block_with_one_comment_line() -> None:
    env = (GRUB_CFG.parent / "grubenv").read_bytes()
    assert len(env) == 1024
    lines = env.decode().rstrip("#").splitlines()
    assert lines[0] == "# GRUB Environment Block"
    assert sum(1 for line in lines if line.startswith("#")) == 1
    assert dict(line.split("=", 1) for line in lines[1:]) == {
        "slot": "A",
        "upgrade_available": "0",
        "bootcount": "0",
        "bootlimit": "3",
    }


def _confirm_module() -> dict[str, object]:
    import runpy

    path = lf.LAYER / "recipes-twelvefactor/twelvefactor-confirm/files/twelvefactor-confirm"
    return runpy.run_path(str(path), run_name="twelvefactor_confirm")


@pytest.mark.parametrize(
    ("content", "online"),
    [
        ('{"v":1,"ts":1.0,"management":"online","solution":"online"}', True),
        ('{"v":1,"ts":1.0,"management":"online","solution":"offline"}', False),
        ('{"v":1,"management":"offline","solution":"online"}', False),
        ("[1, 2]", False),
        ("{not json", False),
    ],
)
def test_confirm_reads_the_agent_state_file(tmp_path: Path, content: str, online: bool) -> None:
    state = tmp_path / "state.json"
    state.write_text(content)
    sessions_online = _confirm_module()["sessions_online"]
    assert callable(sessions_online)
    assert sessions_online(state) is online
    assert sessions_online(tmp_path / "missing.json") is False
