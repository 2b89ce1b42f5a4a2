"""The layer's twelvefactor-link (the tunnel's keepalive and time sync follow the
agent's link profile), its parts that need no root: the boot tier runs it for real
(tests/boot/test_metered_device.py)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from testbed import layerscript

FILES = Path(__file__).resolve().parents[2] / (
    "meta-twelvefactor/recipes-connectivity/twelvefactor-netconfig/files"
)
SCRIPT = FILES / "twelvefactor-link"
HUB_KEY = "aGVsbG8gd29ybGQgdGhpcyBpcyBhIDMyIGJ5dGUga2V5IQ=="


@pytest.fixture(scope="module")
def link() -> ModuleType:
    return layerscript.load(SCRIPT, "twelvefactor_link")


def rendered_netdev(keepalive: str) -> str:
    """The layer's .netdev template as twelvefactor-netconfig fills it."""
    text = (FILES / "50-twelvefactor-tunnel.netdev.in").read_text(encoding="utf-8")
    for name, value in {
        "WG_PRIVATE_KEY_FILE": "/data/identity/wg.key",
        "WG_LISTEN_PORT": "51820",
        "HUB_PUBLIC_KEY": HUB_KEY,
        "HUB_ENDPOINT": "192.0.2.1:51820",
        "ALLOWED_IPS": "10.77.0.1/32",
        "PERSISTENT_KEEPALIVE": keepalive,
    }.items():
        text = text.replace(f"@{name}@", value)
    assert "@" not in text, text
    return text


def test_the_rendered_netdev_gives_interface_hub_and_keepalive(link: ModuleType) -> None:
    assert link.parse_netdev(rendered_netdev("25")) == link.Tunnel("tf0", HUB_KEY, 25)
    assert link.parse_netdev(rendered_netdev("0")).keepalive == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[NetDev]\nName=tf0\n", r"no \[WireGuardPeer\]PublicKey"),
        ("[WireGuardPeer]\nPublicKey=k\n", r"no \[NetDev\]Name"),
        ("[NetDev]\nName=tf0\n[WireGuardPeer]\nPublicKey=k\nPersistentKeepalive=-1\n", "'-1'"),
    ],
)
def test_a_netdev_without_what_it_needs_is_refused(
    link: ModuleType, text: str, message: str
) -> None:
    with pytest.raises(link.LinkError, match=message):
        link.parse_netdev(text)


@pytest.mark.parametrize("word", ["always-on", "awake", "asleep"])
def test_the_three_states(link: ModuleType, word: str) -> None:
    assert link.parse_state(f"{word}\n") == word


@pytest.mark.parametrize("text", ["", "metered\n", "asleep; reboot", "x" * 4096])
def test_anything_else_is_refused(link: ModuleType, text: str) -> None:
    with pytest.raises(link.LinkError, match="unknown link state"):
        link.parse_state(text)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (
            "always-on",
            [["systemctl", "start", "systemd-timesyncd.service"], "25"],
        ),
        ("awake", [["systemctl", "start", "systemd-timesyncd.service"], "0"]),
        ("asleep", ["0", ["systemctl", "stop", "systemd-timesyncd.service"]]),
    ],
)
def test_each_state_sets_keepalive_and_time_sync(
    link: ModuleType, monkeypatch: pytest.MonkeyPatch, state: str, expected: list[object]
) -> None:
    """The keepalive provisioned only when always on; time sync stopped only asleep,
    after the keepalive is off (the commands themselves run in the boot tier)."""
    ran: list[list[str]] = []
    monkeypatch.setitem(link.__dict__, "run", ran.append)
    link.apply(state, link.parse_netdev(rendered_netdev("25")))
    wg = ["wg", "set", "tf0", "peer", HUB_KEY, "persistent-keepalive"]
    assert ran == [[*wg, e] if isinstance(e, str) else e for e in expected]
