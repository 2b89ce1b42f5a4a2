"""Agent configuration: one TOML file, validated before anything starts.

`validate` is a pure function over the parsed document (every rule is unit
tested without files); `check_files` is the separate step that looks at the
file system (certificates readable, socket group present). Every error names
the key it is about, in the form `config: <key>: <problem>`.

Records are NamedTuples rather than dataclasses: the dataclasses module
(with the inspect and ast modules it imports) costs the agent about 0.9 MB
of resident memory, and the device's budget is 25 MB in all.
"""

from __future__ import annotations

import grp
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from twelvefactor_agent.protocol.names import DEVICE_ID_RE

RESERVED_IDS = frozenset({"management", "solution"})
HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
GROUP_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
# A publish request is one JSON line of at most 1 MiB; the payload travels as
# base64 (4/3 larger), so a message larger than this could never be sent.
MAX_MESSAGE_BYTES_LIMIT = 700 * 1024


class ConfigError(Exception):
    """One or more configuration problems; each line names its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DeviceSettings(NamedTuple):
    id: str
    certificate: Path
    key: Path
    ca: Path


class Endpoint(NamedTuple):
    host: str
    port: int


class AgentSettings(NamedTuple):
    data_dir: Path
    socket: Path
    socket_group: str | None
    state_file: Path
    health_interval: int
    health_heartbeat: int
    keepalive: int
    confirm_window: int


class QueueSettings(NamedTuple):
    max_bytes: int
    max_age: int
    max_message_bytes: int


class BackoffSettings(NamedTuple):
    initial: float
    multiplier: float
    cap: float


class UpdateSettings(NamedTuple):
    allow_downgrade: bool


ALWAYS_ON = "always-on"
METERED = "metered"
PROFILES = (ALWAYS_ON, METERED)


class LinkSettings(NamedTuple):
    profile: str  # always-on | metered (session/checkin.py)
    checkin_interval: int
    checkin_max: int
    early_bytes: int
    early_age: int


class Config(NamedTuple):
    device: DeviceSettings
    management: Endpoint
    solution: Endpoint
    agent: AgentSettings
    queue: QueueSettings
    backoff: BackoffSettings
    update: UpdateSettings
    link: LinkSettings


_TYPE_NAMES = {
    str: "string",
    int: "integer",
    float: "float",
    bool: "boolean",
    list: "array",
    dict: "table",
}


def _type_name(value: object) -> str:
    for typ, name in _TYPE_NAMES.items():
        if type(value) is typ:
            return name
    return type(value).__name__  # TOML dates and times


class _Field(NamedTuple):
    kind: str  # "string", "integer", "number", "boolean", "path", "host", "group"
    default: object = None  # None: required (unless optional)
    optional: bool = False
    low: float | None = None
    high: float | None = None
    check: Callable[[Any], str | None] | None = None


def _check_device_id(value: str) -> str | None:
    if not DEVICE_ID_RE.fullmatch(value):
        return f"{value!r} is not a device id ([a-z0-9][a-z0-9-]{{0,62}})"
    if value in RESERVED_IDS:
        return f"{value!r} is reserved for a service"
    return None


def _check_profile(value: str) -> str | None:
    if value not in PROFILES:
        return f"{value!r} is not a profile ({' or '.join(PROFILES)})"
    return None


def _check_socket_path(value: str) -> str | None:
    if len(value.encode()) > MAX_SOCKET_PATH:
        return f"path is longer than {MAX_SOCKET_PATH} bytes, too long for a Unix socket"
    return None


_SCHEMA: dict[str, dict[str, _Field]] = {
    "device": {
        "id": _Field("string", check=_check_device_id),
        "certificate": _Field("path"),
        "key": _Field("path"),
        "ca": _Field("path"),
    },
    "management": {
        "host": _Field("host"),
        "port": _Field("integer", 8883, low=1, high=65535),
    },
    "solution": {
        "host": _Field("host"),
        "port": _Field("integer", 8884, low=1, high=65535),
    },
    "agent": {
        "data_dir": _Field("path", "/data/agent"),
        "socket": _Field("path", "/run/twelvefactor/agent.sock", check=_check_socket_path),
        "socket_group": _Field("group", optional=True),
        "state_file": _Field("path", "/run/twelvefactor/state.json"),
        # Health is sampled every health_interval and sent when it changed, or
        # every health_heartbeat regardless (session/healthchange.py).
        "health_interval": _Field("integer", 60, low=5, high=86400),
        "health_heartbeat": _Field("integer", 1800, low=5, high=86400),
        # The MQTT keepalive: long, because the hub learns that a device is gone
        # from its tunnel within two minutes (docs/decisions.md, issue 18).
        "keepalive": _Field("integer", 1800, low=5, high=3600),
        # How long a remotely managed change of connectivity settings has to
        # reach the management service before it is reverted (docs/agent.md).
        "confirm_window": _Field("integer", 120, low=5, high=86400),
    },
    "queue": {
        "max_bytes": _Field("integer", 16 * 1024 * 1024, low=64 * 1024, high=1 << 40),
        "max_age": _Field("integer", 7 * 86400, low=60, high=10 * 365 * 86400),
        "max_message_bytes": _Field("integer", 256 * 1024, low=1, high=MAX_MESSAGE_BYTES_LIMIT),
    },
    "backoff": {
        "initial": _Field("number", 1.0, low=0.01, high=3600.0),
        "multiplier": _Field("number", 2.0, low=1.0, high=10.0),
        "cap": _Field("number", 300.0, low=0.01, high=86400.0),
    },
    # Provisioning's alone (overlay.PROVISIONED): a management service that
    # could allow downgrades could also roll a fleet back to a vulnerable release.
    "update": {
        "allow_downgrade": _Field("boolean", False),
    },
    # How the device uses its link (issue 18): always on, or checking in on a schedule.
    "link": {
        "profile": _Field("string", ALWAYS_ON, check=_check_profile),
        "checkin_interval": _Field("integer", 14400, low=60, high=7 * 86400),
        "checkin_max": _Field("integer", 300, low=30, high=3600),
        "early_bytes": _Field("integer", 65536, low=0, high=1 << 40),  # 0: never early
        "early_age": _Field("integer", 3600, low=60, high=7 * 86400),
    },
}

ENDPOINT_TABLES = ("management", "solution")


def defaults() -> dict[str, dict[str, object]]:
    """The documented default of every key that has one (docs/agent.md lists them)."""
    return {
        table: {k: f.default for k, f in fields.items() if f.default is not None}
        for table, fields in _SCHEMA.items()
    }


def _check_value(key: str, field: _Field, value: object) -> str | None:
    """Problem with one value, or None. `key` is the dotted name for messages."""
    kind = field.kind
    if kind in ("string", "path", "host", "group"):
        if not isinstance(value, str):
            return f"config: {key}: expected a string, got {_type_name(value)}"
        if value == "" or value.strip() != value or "\x00" in value:
            return f"config: {key}: must be a non-empty string without surrounding spaces"
        if kind == "path" and not value.startswith("/"):
            return f"config: {key}: expected an absolute path, got {value!r}"
        if kind == "host" and not _is_host(value):
            return f"config: {key}: {value!r} is not a host name or IP address"
        if kind == "group" and not GROUP_RE.fullmatch(value):
            return f"config: {key}: {value!r} is not a group name"
    elif kind == "integer":
        if type(value) is not int:
            return f"config: {key}: expected an integer, got {_type_name(value)}"
    elif kind == "number":
        if type(value) not in (int, float):
            return f"config: {key}: expected a number, got {_type_name(value)}"
    elif kind == "boolean":
        if type(value) is not bool:
            return f"config: {key}: expected a boolean (true or false), got {_type_name(value)}"
    else:  # pragma: no cover - schema error
        raise AssertionError(kind)
    if field.low is not None or field.high is not None:
        assert isinstance(value, int | float)
        if value != value or (field.low is not None and value < field.low):
            return f"config: {key}: {value!r} is out of range [{field.low}, {field.high}]"
        if field.high is not None and value > field.high:
            return f"config: {key}: {value!r} is out of range [{field.low}, {field.high}]"
    if field.check is not None:
        problem = field.check(value)
        if problem is not None:
            return f"config: {key}: {problem}"
    return None


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return len(value) <= 253 and HOSTNAME_RE.fullmatch(value) is not None
    return True


def validate(doc: Mapping[str, object]) -> Config:
    """Check a parsed TOML document and build the configuration, or raise ConfigError."""
    problems: list[str] = []
    values: dict[str, dict[str, Any]] = {}
    for name, value in doc.items():
        if name in _SCHEMA:
            continue
        if isinstance(value, dict | list):
            problems.append(
                f"config: {name}: only two endpoints exist, [management] and [solution]; "
                "a third endpoint is not allowed"
            )
        else:
            problems.append(f"config: {name}: unknown key")
    for table, fields in _SCHEMA.items():
        raw = doc.get(table)
        if raw is None:
            raw = {}
        elif not isinstance(raw, dict):
            problems.append(f"config: {table}: expected a table, got {_type_name(raw)}")
            raw = {}
        for key in raw:
            if key not in fields:
                problems.append(f"config: {table}.{key}: unknown key")
        section: dict[str, Any] = {}
        for key, field in fields.items():
            dotted = f"{table}.{key}"
            if key not in raw:
                if field.default is None and not field.optional:
                    problems.append(f"config: {dotted}: required key is missing")
                section[key] = field.default
                continue
            problem = _check_value(dotted, field, raw[key])
            if problem is not None:
                problems.append(problem)
            section[key] = raw[key]
        values[table] = section
    if not problems:
        queue = doc.get("queue")
        if not (isinstance(queue, dict) and "max_message_bytes" in queue):
            # The default message limit follows a smaller queue bound.
            values["queue"]["max_message_bytes"] = min(
                values["queue"]["max_message_bytes"], values["queue"]["max_bytes"]
            )
        problems.extend(_cross_checks(values))
    if problems:
        raise ConfigError(problems)
    return _build(values)


def _cross_checks(v: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    q, b = v["queue"], v["backoff"]
    if q["max_message_bytes"] > q["max_bytes"]:
        problems.append(
            f"config: queue.max_message_bytes: {q['max_message_bytes']} is larger than "
            f"queue.max_bytes ({q['max_bytes']})"
        )
    if b["cap"] < b["initial"]:
        problems.append(
            f"config: backoff.cap: {b['cap']} is smaller than backoff.initial ({b['initial']})"
        )
    link = v["link"]
    if link["checkin_max"] >= link["checkin_interval"]:
        problems.append(
            f"config: link.checkin_max: {link['checkin_max']} is not shorter than "
            f"link.checkin_interval ({link['checkin_interval']})"
        )
    a = v["agent"]
    if a["health_heartbeat"] < a["health_interval"]:
        problems.append(
            f"config: agent.health_heartbeat: {a['health_heartbeat']} is shorter than "
            f"agent.health_interval ({a['health_interval']})"
        )
    if a["socket"] == a["state_file"]:
        problems.append("config: agent.state_file: must differ from agent.socket")
    return problems


def _build(v: dict[str, dict[str, Any]]) -> Config:
    d, a, q, b = v["device"], v["agent"], v["queue"], v["backoff"]
    return Config(
        device=DeviceSettings(
            id=d["id"], certificate=Path(d["certificate"]), key=Path(d["key"]), ca=Path(d["ca"])
        ),
        management=Endpoint(v["management"]["host"], v["management"]["port"]),
        solution=Endpoint(v["solution"]["host"], v["solution"]["port"]),
        agent=AgentSettings(
            data_dir=Path(a["data_dir"]),
            socket=Path(a["socket"]),
            socket_group=a["socket_group"],
            state_file=Path(a["state_file"]),
            health_interval=a["health_interval"],
            health_heartbeat=a["health_heartbeat"],
            keepalive=a["keepalive"],
            confirm_window=a["confirm_window"],
        ),
        queue=QueueSettings(q["max_bytes"], q["max_age"], q["max_message_bytes"]),
        backoff=BackoffSettings(float(b["initial"]), float(b["multiplier"]), float(b["cap"])),
        update=UpdateSettings(allow_downgrade=v["update"]["allow_downgrade"]),
        link=LinkSettings(**v["link"]),
    )


def parse(text: str) -> Config:
    """Parse and validate TOML text."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config: not valid TOML: {exc}"]) from exc
    return validate(doc)


def check_files(config: Config) -> list[str]:
    """Problems the file system shows: identity files unreadable, socket group absent."""
    problems = []
    for key in ("certificate", "key", "ca"):
        path: Path = getattr(config.device, key)
        try:
            with path.open("rb") as f:
                if not f.read(1):
                    problems.append(f"config: device.{key}: {path} is empty")
        except OSError as exc:
            problems.append(f"config: device.{key}: cannot read {path}: {exc.strerror}")
    group = config.agent.socket_group
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            problems.append(f"config: agent.socket_group: group {group!r} does not exist")
    return problems


def load(path: Path) -> Config:
    """Read, parse, validate and check a configuration file; ConfigError on any problem."""
    return load_document(path)[1]


def load_document(path: Path) -> tuple[dict[str, Any], Config]:
    """As `load`, and the parsed document too (the base that managed overlays go on)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError([f"config: cannot read {path}: {reason}"]) from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: config: not valid TOML: {exc}"]) from exc
    try:
        config = validate(doc)
    except ConfigError as exc:
        # Name the file too: the journal line must say which file to fix.
        raise ConfigError([f"{path}: {p}" for p in exc.problems]) from exc
    problems = check_files(config)
    if problems:
        raise ConfigError(problems)
    return doc, config
