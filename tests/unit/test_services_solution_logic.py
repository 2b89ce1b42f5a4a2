"""Solution decisions without I/O: envelope checks, the archive record, retry timing."""

from __future__ import annotations

import json

import pytest
from twelvefactor_agent.protocol.envelope import ProtocolError
from twelvefactor_services.solution.envelope import backoff, parse_envelope

GOOD = {
    "v": 1,
    "device": "dev-1",
    "queue_id": "00000000deadbeef",
    "seq": 42,
    "stream": "temp.c_1-x",
    "ts": 5.5,
    "payload": "aGk=",
}


def raw(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_the_protocol_example_parses_and_unknown_fields_are_kept() -> None:
    env = parse_envelope("dev-1", ("data", "temp.c_1-x"), raw(extra=[1]))
    assert (env.device, env.seq, env.stream, env.ts) == ("dev-1", 42, "temp.c_1-x", 5.5)
    record = json.loads(env.record(9.0))
    assert record["received_ts"] == 9.0 and record["extra"] == [1] and record["payload"] == "aGk="
    assert parse_envelope("dev-1", ("data", "temp.c_1-x"), raw(payload="")).seq == 42


@pytest.mark.parametrize(
    ("rest", "data", "message"),
    [
        (("data",), raw(), "topic suffix"),
        (("meta", "temp.c_1-x"), raw(), "topic suffix"),
        (("data", "temp.c_1-x"), b"[]", "not a JSON object"),
        (("data", "temp.c_1-x"), raw(v=2), "schema version"),
        (("data", "temp.c_1-x"), raw(device="dev-2"), "names device 'dev-2'"),
        (("data", "temp.c_1-x"), raw(queue_id=None), "'queue_id'"),
        (("data", "temp.c_1-x"), raw(queue_id="DEADBEEF00000000"), "'queue_id'"),
        (("data", "temp.c_1-x"), raw(seq=1.0), "'seq'"),
        (("data", "temp.c_1-x"), raw(seq=False), "'seq'"),
        (("data", "temp.c_1-x"), raw(seq=-1), "'seq'"),
        (("data", "temp.c_1-x"), raw(seq=2**63), "'seq'"),
        (("data", "bad stream"), raw(stream="bad stream"), "'stream'"),
        (("data", "x" * 65), raw(stream="x" * 65), "'stream'"),
        (("data", "other"), raw(), "topic stream 'other'"),
        (("data", "temp.c_1-x"), raw(ts=None), "missing field 'ts'"),
        (("data", "temp.c_1-x"), raw(payload=5), "'payload'"),
        (("data", "temp.c_1-x"), raw(payload="aGk"), "not valid base64"),
        (("data", "temp.c_1-x"), raw(payload="a GK="), "not valid base64"),
    ],
)
def test_bad_envelopes_say_what_is_wrong(rest: tuple[str, ...], data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_envelope("dev-1", rest, data)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n, first=0.5, cap=5.0) for n in range(0, 7)] == [
        0.0,
        0.5,
        1.0,
        2.0,
        4.0,
        5.0,
        5.0,
    ]
    assert backoff(10_000) == 30.0
