"""Malformed configuration files: `twelvefactor-agent run` exits 2 naming the key.

Run as the device would run it (the real command, real files), so what is
checked is the exit status systemd sees and the message the journal shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from testbed.pace import PACE


def good(tmp: Path) -> dict[str, str]:
    for name in ("device.crt", "device.key", "ca.crt"):
        (tmp / name).write_text("-----BEGIN CERTIFICATE-----\n")
    return {
        "device": f'id = "dev-1"\ncertificate = "{tmp}/device.crt"\n'
        f'key = "{tmp}/device.key"\nca = "{tmp}/ca.crt"\n',
        "management": 'host = "127.0.0.1"\nport = 8883\n',
        "solution": 'host = "127.0.0.1"\nport = 8884\n',
        "agent": f'data_dir = "{tmp}/data"\nsocket = "{tmp}/a.sock"\n',
    }


def render(tables: dict[str, str]) -> str:
    return "".join(f"[{name}]\n{body}" for name, body in tables.items())


# (what to change, the key the message must name)
CASES = [
    ("third endpoint", lambda t: {**t, "weather": 'host = "10.0.0.9"\nport = 443\n'}, "weather"),
    ("endpoints table", lambda t: {**t, "endpoints": 'extra = "x"\n'}, "endpoints"),
    ("unknown key", lambda t: {**t, "agent": t["agent"] + "colour = 1\n"}, "agent.colour"),
    (
        "port as string",
        lambda t: {**t, "management": 'host = "h"\nport = "8883"\n'},
        "management.port",
    ),
    (
        "port out of range",
        lambda t: {**t, "solution": 'host = "h"\nport = 70000\n'},
        "solution.port",
    ),
    ("bool as int", lambda t: {**t, "agent": t["agent"] + "keepalive = true\n"}, "agent.keepalive"),
    ("missing host", lambda t: {**t, "solution": "port = 8884\n"}, "solution.host"),
    ("missing device id", lambda t: {**t, "device": t["device"].split("\n", 1)[1]}, "device.id"),
    (
        "bad device id",
        lambda t: {**t, "device": t["device"].replace("dev-1", "Dev_1")},
        "device.id",
    ),
    (
        "reserved device id",
        lambda t: {**t, "device": t["device"].replace("dev-1", "solution")},
        "device.id",
    ),
    (
        "missing certificate",
        lambda t: {**t, "device": t["device"].replace("device.crt", "no.crt")},
        "device.certificate",
    ),
    ("queue bound negative", lambda t: {**t, "queue": "max_bytes = -1\n"}, "queue.max_bytes"),
    ("unknown table", lambda t: {**t, "logging": 'level = "debug"\n'}, "logging"),
]


@pytest.mark.parametrize(("name", "change", "key"), CASES, ids=[c[0] for c in CASES])
def test_malformed_config_exits_2_naming_the_key(
    tmp_path: Path, name: str, change: object, key: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(render(change(good(tmp_path))))  # type: ignore[operator]
    proc = PACE.run(
        [sys.executable, "-m", "twelvefactor_agent.cli", "run", "--config", str(config)],
    )
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr, proc.stderr
    assert not (tmp_path / "data").exists(), "nothing started"


def test_unparseable_and_missing_files_exit_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[device\nid = ")
    for path, words in (
        (broken, f"{broken}: config: not valid TOML"),
        (tmp_path / "absent.toml", "absent.toml"),
    ):
        proc = PACE.run(
            [sys.executable, "-m", "twelvefactor_agent.cli", "run", "--config", str(path)],
        )
        assert proc.returncode == 2
        assert words in proc.stderr, proc.stderr


def test_good_config_passes_the_check(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(render(good(tmp_path)))
    proc = PACE.run(
        [sys.executable, "-m", "twelvefactor_agent.cli", "check-config", "--config", str(config)],
    )
    assert proc.returncode == 0, proc.stderr
