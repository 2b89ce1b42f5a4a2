"""Pure parts of the agent: local API requests, payloads, system readings, sd_notify, state file."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twelvefactor_agent.device import sysinfo
from twelvefactor_agent.forward.queue import Message, QueueStats
from twelvefactor_agent.localapi.connection import Checkin, Publish, Refusal, Status, parse_request
from twelvefactor_agent.protocol import topics
from twelvefactor_agent.session import payloads
from twelvefactor_agent.session.statefile import StateFile
from twelvefactor_agent.util import sdnotify


def req(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_publish_request() -> None:
    line = req(op="publish", stream="temperature", payload=base64.b64encode(b"21.5").decode())
    result = parse_request(line, 1024)
    assert isinstance(result, Publish) and result == Publish("temperature", b"21.5")


def test_status_request() -> None:
    assert isinstance(parse_request(b'{"op":"status","extra":1}', 1024), Status)
    assert isinstance(parse_request(b'{"op":"checkin"}', 1024), Checkin)  # a metered device


@pytest.mark.parametrize(
    ("line", "code", "words"),
    [
        (b"not json", "bad_request", "not a JSON object"),
        (b"[1,2]", "bad_request", "not a JSON object"),
        (b"\xff\xfe", "bad_request", "not a JSON object"),
        (req(op="delete"), "bad_request", "unknown op 'delete'"),
        (req(stream="s", payload=""), "bad_request", "unknown op None"),
        (req(op="publish", stream="a/b", payload=""), "bad_request", "stream must match"),
        (req(op="publish", stream="", payload=""), "bad_request", "stream must match"),
        (req(op="publish", stream="x" * 65, payload=""), "bad_request", "stream must match"),
        (req(op="publish", stream=5, payload=""), "bad_request", "stream must match"),
        (req(op="publish", stream="s"), "bad_request", "payload must be a base64 string"),
        (req(op="publish", stream="s", payload="@@@@"), "bad_request", "not valid base64"),
        (req(op="publish", stream="s", payload="YWJj\n"), "bad_request", "not valid base64"),
        (
            req(op="publish", stream="s", payload=base64.b64encode(b"x" * 11).decode()),
            "too_large",
            "over 10 bytes",
        ),
        (req(op="publish", stream="s", payload="A" * 100_000), "too_large", "over 10 bytes"),
    ],
)
def test_refusals(line: bytes, code: str, words: str) -> None:
    result = parse_request(line, 10)
    assert isinstance(result, Refusal)
    assert result.error == code and words in result.message
    assert result.answer() == {"ok": False, "error": code, "message": result.message}


def test_exactly_the_limit_is_accepted() -> None:
    line = req(op="publish", stream="s", payload=base64.b64encode(b"x" * 10).decode())
    assert parse_request(line, 10) == Publish("s", b"x" * 10)


@given(st.binary(max_size=300), st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True))
def test_any_payload_round_trips(data: bytes, stream: str) -> None:
    line = req(op="publish", stream=stream, payload=base64.b64encode(data).decode())
    assert parse_request(line, 300) == Publish(stream, data)


@given(
    st.integers(1, 2**62),
    st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
    st.floats(0, 4e9),
    st.binary(max_size=100),
)
def test_envelope_is_the_json_of_docs_protocol(
    seq: int, stream: str, ts: float, data: bytes
) -> None:
    raw = payloads.data_envelope("dev-001", "00c0ffee00c0ffee", Message(seq, stream, ts, data))
    assert json.loads(raw) == {
        "v": 1,
        "device": "dev-001",
        "queue_id": "00c0ffee00c0ffee",
        "seq": seq,
        "stream": stream,
        "ts": ts,
        "payload": base64.b64encode(data).decode(),
    }


def test_management_payloads() -> None:
    assert json.loads(payloads.online(5.0)) == {"v": 1, "online": True, "ts": 5.0}
    assert json.loads(payloads.will()) == {"v": 1, "online": False, "reason": "lost"}
    assert json.loads(payloads.shutdown(6.0)) == {
        "v": 1,
        "online": False,
        "reason": "shutdown",
        "ts": 6.0,
    }
    assert topics.mgmt_up("dev-001", "health") == "mgmt/dev-001/up/health"
    assert topics.data("dev-001", "t") == "sol/dev-001/up/data/t"
    health = json.loads(
        payloads.health(
            ts=1.0,
            uptime_s=2.0,
            load=[0.1, 0.2, 0.3],
            memory={"total_kb": 10, "available_kb": 5},
            data={"path": "/data", "total_bytes": 100, "free_bytes": 50},
            slot="A",
            os_version="1.0",
            agent_version="0.1.0",
            queue=QueueStats(3, 30, 1, 0.5),
            last_error=None,
        )
    )
    assert set(health) == {
        "v", "ts", "uptime_s", "load", "memory", "data", "slot", "os_version",
        "agent_version", "queue", "last_error",
    }  # fmt: skip
    assert health["queue"] == {
        "depth": 3,
        "bytes": 30,
        "dropped": 1,
        "oldest_ts": 0.5,
        "fault": None,
    }


@pytest.mark.parametrize(
    ("cmdline", "slot"),
    [
        ("BOOT_IMAGE=/vmlinuz root=/dev/vda2 twelvefactor.slot=A ro quiet", "A"),
        ("twelvefactor.slot=B", "B"),
        ("root=/dev/vda2 twelvefactor.slot=C", None),
        ("root=/dev/vda2 xtwelvefactor.slot=A", None),
        ("twelvefactor.slot=AB", None),
        ("", None),
        ("twelvefactor.slot=A twelvefactor.slot=B\n", "B"),
    ],
)
def test_slot_from_cmdline(cmdline: str, slot: str | None) -> None:
    assert sysinfo.parse_cmdline_slot(cmdline) == slot


def test_meminfo() -> None:
    text = "MemTotal:        2000000 kB\nMemFree:  1 kB\nMemAvailable:    1500000 kB\n"
    assert sysinfo.parse_meminfo(text) == {"total_kb": 2000000, "available_kb": 1500000}
    assert sysinfo.parse_meminfo("") == {"total_kb": None, "available_kb": None}


def test_os_release() -> None:
    text = 'ID=twelvefactor\nVERSION_ID="1.0"\nPRETTY_NAME="twelvefactor 1.0 (wrynose)"\n# c\n'
    assert sysinfo.parse_os_release(text) == {
        "id": "twelvefactor",
        "version": "1.0",
        "pretty": "twelvefactor 1.0 (wrynose)",
    }


def test_readers_degrade_to_null(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert sysinfo.boot_slot(missing) is None
    assert sysinfo.uptime(missing) is None
    assert sysinfo.hardware(missing) is None
    assert sysinfo.os_release((missing,)) == {"id": None, "version": None, "pretty": None}
    assert sysinfo.disk(missing) == {"path": str(missing), "total_bytes": None, "free_bytes": None}
    (tmp_path / "hwrevision").write_text("qemux86-64 1.0\n")
    assert sysinfo.hardware(tmp_path / "hwrevision") == "qemux86-64 1.0"
    usage = sysinfo.disk(tmp_path)
    assert isinstance(usage["total_bytes"], int) and usage["total_bytes"] > 0


def test_watchdog_interval_is_half_of_watchdog_sec() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    other_pid = {"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}
    assert sdnotify.watchdog_interval(other_pid) is None  # meant for another process


def test_notify_without_a_manager_is_a_no_op() -> None:
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1"}) is False


def test_state_file_is_replaced_whole(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    state.write()
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc["v"] == 1 and doc["management"] == doc["solution"] == "offline"
    assert state.set("management", True) is True
    assert state.set("management", True) is False
    doc = json.loads((tmp_path / "state.json").read_text())
    assert (doc["management"], doc["solution"]) == ("online", "offline")
    assert doc["since"]["management"] >= doc["since"]["solution"]
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
