"""Configuration validation: pure checks over parsed documents, then the file step."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from helpers import MINIMAL_AGENT_CONFIG
from hypothesis import given
from hypothesis import strategies as st
from twelvefactor_agent.config import settings as cfg

MINIMAL = MINIMAL_AGENT_CONFIG

FULL = (Path(__file__).resolve().parents[2] / "agent" / "config" / "agent.toml").read_text()


def problems_of(text: str) -> list[str]:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse(text)
    return info.value.problems


def test_minimal_document_gets_documented_defaults() -> None:
    c = cfg.parse(MINIMAL)
    assert c.device.id == "dev-001"
    assert c.management == cfg.Endpoint("10.77.0.1", 8883)
    assert c.solution == cfg.Endpoint("10.77.0.1", 8884)
    assert c.agent.data_dir == Path("/data/agent")
    assert c.agent.socket == Path("/run/twelvefactor/agent.sock")
    assert c.agent.socket_group is None
    assert c.agent.state_file == Path("/run/twelvefactor/state.json")
    assert (c.agent.health_interval, c.agent.health_heartbeat, c.agent.keepalive) == (
        60,
        1800,
        1800,
    )
    assert c.queue == cfg.QueueSettings(16777216, 604800, 262144)
    assert c.backoff == cfg.BackoffSettings(1.0, 2.0, 300.0)
    assert c.update == cfg.UpdateSettings(allow_downgrade=False)


def test_shipped_device_config_is_valid_and_spells_out_the_defaults() -> None:
    c = cfg.parse(FULL)
    doc = tomllib.loads(FULL)
    for table, keys in cfg.defaults().items():
        for key, default in keys.items():
            assert doc[table][key] == default, f"{table}.{key} differs from its default"
    assert c.agent.socket_group == "twelvefactor"


def test_downgrades_allowed_only_when_the_file_says_so() -> None:
    assert cfg.parse(MINIMAL + "[update]\nallow_downgrade = true\n").update.allow_downgrade
    assert not cfg.parse(MINIMAL + "[update]\nallow_downgrade = false\n").update.allow_downgrade


def test_default_message_limit_follows_a_small_queue() -> None:
    c = cfg.parse(MINIMAL + "[queue]\nmax_bytes = 65536\n")
    assert (c.queue.max_bytes, c.queue.max_message_bytes) == (65536, 65536)


def test_integers_are_accepted_where_numbers_are_expected() -> None:
    c = cfg.parse(MINIMAL + "[backoff]\ninitial = 2\ncap = 60\n")
    assert c.backoff.initial == 2.0 and isinstance(c.backoff.initial, float)


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# Each malformed document, and the key its message must name.
MALFORMED = [
    ('[queue]\nmax_bytes = "16M"\n', "queue.max_bytes", "expected an integer, got string"),
    ("[queue]\nmax_bytes = true\n", "queue.max_bytes", "expected an integer, got boolean"),
    ("[agent]\nkeepalive = 30.0\n", "agent.keepalive", "expected an integer, got float"),
    ("[agent]\nhealth_interval = 0\n", "agent.health_interval", "out of range"),
    ("[agent]\nkeepalive = -1\n", "agent.keepalive", "out of range"),
    ("[management]\nport = 70000\n", "management.port", "out of range"),
    ('[solution]\nport = "8884"\n', "solution.port", "expected an integer, got string"),
    ("[backoff]\nmultiplier = 0.5\n", "backoff.multiplier", "out of range"),
    ("[backoff]\ninitial = nan\n", "backoff.initial", "out of range"),
    ("[backoff]\ninitial = true\n", "backoff.initial", "expected a number, got boolean"),
    ('[update]\nallow_downgrade = "yes"\n', "update.allow_downgrade", "expected a boolean"),
    ("[update]\nallow_downgrade = 1\n", "update.allow_downgrade", "expected a boolean"),
    ("[update]\ndowngrade = true\n", "update.downgrade", "unknown key"),
    ("[backoff]\ninitial = 10.0\ncap = 5.0\n", "backoff.cap", "smaller than backoff.initial"),
    (
        "[queue]\nmax_message_bytes = 100000\nmax_bytes = 65536\n",
        "queue.max_message_bytes",
        "larger",
    ),
    ("[queue]\nmax_message_bytes = 1048576\n", "queue.max_message_bytes", "out of range"),
    ('[agent]\ndata_dir = "data/agent"\n', "agent.data_dir", "absolute path"),
    ('[agent]\nsocket = "/' + "s" * 120 + '"\n', "agent.socket", "too long"),
    ("[agent]\nsocket_group = 12\n", "agent.socket_group", "expected a string, got integer"),
    ('[agent]\nsocket_group = "Bad Group"\n', "agent.socket_group", "not a group name"),
    ('[agent]\nstate_file = "/run/twelvefactor/agent.sock"\n', "agent.state_file", "differ"),
    ('[agent]\nlisten = "0.0.0.0:80"\n', "agent.listen", "unknown key"),
    ("[queue]\nmax_age = 1970-01-01T00:00:00Z\n", "queue.max_age", "got datetime"),
    ('[management.backup]\nhost = "10.0.0.9"\n', "management.backup", "unknown key"),
    ('[weather]\nhost = "api.example.com"\nport = 443\n', "weather", "a third endpoint"),
    ('[endpoints.weather]\nhost = "api.example.com"\n', "endpoints", "a third endpoint"),
    ('[[extra]]\nhost = "10.0.0.2"\n', "extra", "a third endpoint"),
    ("verbose = true\n", "verbose", "unknown key"),
    ("backoff = 3\n", "backoff", "expected a table, got integer"),
]


@pytest.mark.parametrize(("extra", "key", "words"), MALFORMED)
def test_malformed_documents_are_refused_naming_the_key(extra: str, key: str, words: str) -> None:
    doc = merged(tomllib.loads(MINIMAL), tomllib.loads(extra))
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(doc)
    problems = info.value.problems
    assert any(p.startswith(f"config: {key}: ") and words in p for p in problems), problems


def test_duplicate_table_from_toml_parser_is_refused() -> None:
    (problem,) = problems_of(MINIMAL + '[device]\nid = "x"\n')
    assert problem.startswith("config: not valid TOML")


@pytest.mark.parametrize(
    ("device_id", "words"),
    [
        ("Dev-001", "not a device id"),
        ("-dev", "not a device id"),
        ("dev_001", "not a device id"),
        ("a" * 64, "not a device id"),
        ("management", "reserved"),
        ("solution", "reserved"),
    ],
)
def test_bad_device_ids(device_id: str, words: str) -> None:
    text = MINIMAL.replace('"dev-001"', f'"{device_id}"')
    problems = problems_of(text)
    assert any(p.startswith("config: device.id: ") and words in p for p in problems), problems


@pytest.mark.parametrize("key", ["id", "certificate", "key", "ca"])
def test_missing_device_keys(key: str) -> None:
    lines = [ln for ln in MINIMAL.splitlines() if not ln.startswith(f"{key} =")]
    problems = problems_of("\n".join(lines))
    assert f"config: device.{key}: required key is missing" in problems


def test_missing_endpoint_host() -> None:
    problems = problems_of(MINIMAL.replace('[solution]\nhost = "10.77.0.1"', "[solution]"))
    assert problems == ["config: solution.host: required key is missing"]


def with_management_host(host: str) -> str:
    return MINIMAL.replace('host = "10.77.0.1"\n[solution]', f'host = "{host}"\n[solution]')


@pytest.mark.parametrize("host", ["", " 10.0.0.1", "bad host", "x..y", "-a.b", "a" * 254])
def test_bad_hosts(host: str) -> None:
    problems = problems_of(
        MINIMAL.replace('host = "10.77.0.1"\n[solution]', f'host = "{host}"\n[solution]')
    )
    assert any(p.startswith("config: management.host: ") for p in problems), problems


@pytest.mark.parametrize("host", ["10.77.0.1", "fd00::1", "broker", "mqtt.example.com"])
def test_good_hosts(host: str) -> None:
    c = cfg.parse(with_management_host(host))
    assert c.management.host == host


def test_all_problems_are_reported_at_once() -> None:
    problems = problems_of(
        MINIMAL + '[queue]\nmax_bytes = "x"\nmax_age = false\n[agent]\nfoo = 1\n'
    )
    keys = sorted(p.split(":")[1].strip() for p in problems)
    assert keys == ["agent.foo", "queue.max_age", "queue.max_bytes"]


@given(st.one_of(st.booleans(), st.text(), st.floats(), st.lists(st.integers())))
def test_non_integers_never_pass_as_integers(value: object) -> None:
    doc = tomllib.loads(MINIMAL)
    doc["queue"] = {"max_bytes": value}
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(doc)
    assert info.value.problems[0].startswith("config: queue.max_bytes: expected an integer")


@given(st.integers(min_value=65536, max_value=1 << 40))
def test_any_integer_in_range_is_accepted(value: int) -> None:
    doc = tomllib.loads(MINIMAL)
    doc["queue"] = {"max_bytes": value, "max_message_bytes": 1024}
    assert cfg.validate(doc).queue.max_bytes == value


# The file-check step (tmp files only).


def write_identity(tmp_path: Path) -> str:
    for name in ("device.crt", "device.key", "ca.crt"):
        (tmp_path / name).write_text("-----BEGIN-----\n")
    return MINIMAL.replace("/data/identity", str(tmp_path))


def test_load_accepts_readable_identity_files(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(write_identity(tmp_path))
    assert cfg.load(path).device.key == tmp_path / "device.key"


def test_load_names_missing_and_empty_identity_files(tmp_path: Path) -> None:
    text = write_identity(tmp_path)
    (tmp_path / "ca.crt").unlink()
    (tmp_path / "device.key").write_text("")
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    assert [p.split(":")[1].strip() for p in info.value.problems] == ["device.key", "device.ca"]


def test_load_names_unreadable_key(tmp_path: Path) -> None:
    text = write_identity(tmp_path)
    (tmp_path / "device.key").unlink()
    (tmp_path / "device.key").mkdir()
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    assert info.value.problems[0].startswith("config: device.key: cannot read")


def test_load_names_unknown_socket_group(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(write_identity(tmp_path) + '[agent]\nsocket_group = "no-such-group-xyz"\n')
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    assert info.value.problems == [
        "config: agent.socket_group: group 'no-such-group-xyz' does not exist"
    ]


def test_load_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match=r"config: cannot read .*missing.toml"):
        cfg.load(tmp_path / "missing.toml")
