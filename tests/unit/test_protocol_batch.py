"""The data batch (issue 18, item 3): several messages of one stream in one binary publish."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twelvefactor_agent.forward.queue import Message
from twelvefactor_agent.protocol import batch, names
from twelvefactor_agent.protocol.envelope import ProtocolError
from twelvefactor_agent.session import payloads
from twelvefactor_services.solution.envelope import parse_data

pytestmark = pytest.mark.unit

QID = "00c0ffee00c0ffee"
items_st = st.lists(
    st.tuples(
        st.integers(0, 2**40),
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        st.binary(max_size=300),
    ),
    min_size=1,
    max_size=20,
).map(
    lambda xs: [
        batch.Item(seq, ts, data)
        for seq, (_, ts, data) in zip(
            sorted({x[0] for x in xs} | set(range(len(xs)))), xs, strict=False
        )
    ]
)


@given(st.from_regex(names.QUEUE_ID_RE, fullmatch=True), items_st)
def test_a_batch_decodes_to_what_was_encoded(queue_id: str, items: list[batch.Item]) -> None:
    raw = batch.encode(queue_id, items)
    assert batch.is_batch(raw) and not batch.is_batch(b'{"v":1}')
    assert batch.decode(raw) == batch.Batched(queue_id, items)
    assert len(raw) == 6 + len(queue_id) + sum(20 + len(i.payload) for i in items)


def test_receivers_get_the_record_a_json_envelope_gives() -> None:
    message = Message(42, "temp", 1764133200.25, b"\x00\x01binary\xff")
    from_json = parse_data("dev-1", ("data", "temp"), payloads.data_envelope("dev-1", QID, message))
    from_batch = parse_data(
        "dev-1", ("data", "temp"), batch.encode(QID, [(42, 1764133200.25, b"\x00\x01binary\xff")])
    )
    assert [e.record(5.0) for e in from_batch] == [e.record(5.0) for e in from_json]
    record = json.loads(from_batch[0].record(5.0))
    assert base64.b64decode(record["payload"]) == message.payload


def corrupt(raw: bytes, at: int, value: bytes) -> bytes:
    return raw[:at] + value + raw[at + len(value) :]


GOOD = batch.encode(QID, [(1, 10.0, b"a"), (2, 11.0, b"bc")])


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"v":1}', "no magic"),
        (batch.MAGIC + b"\x01", "truncated header"),
        (corrupt(GOOD, 4, b"\x02"), "unsupported version 2"),
        (batch.MAGIC + b"\x01\x10abc", "truncated queue id"),
        (corrupt(GOOD, 6, b"\xff"), "not ASCII"),
        (corrupt(GOOD, 6, b"X"), "is not a queue id"),
        (GOOD[:-1], "message 2 is truncated"),
        (GOOD + b"\x00" * 5, "message 3 has a truncated header"),
        (batch.encode(QID, [(5, 1.0, b""), (5, 2.0, b"")]), "seq 5 is not above 5"),
        (batch.encode(QID, [(2**63, 1.0, b"")]), "out of range"),
        (batch.encode(QID, [(1, float("nan"), b"")]), "not finite"),
        (batch.encode(QID, []), "no messages"),
        (corrupt(GOOD, 6 + 16 + 16, struct.pack(">I", 2**32 - 1)), "message 1 is truncated"),
    ],
)
def test_a_bad_batch_is_refused_whole_with_the_reason(raw: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        batch.decode(raw)


def test_the_topic_names_the_stream_and_a_bad_one_is_refused() -> None:
    got = parse_data("dev-1", ("data", "s1"), GOOD)
    assert [(e.seq, e.stream, e.queue_id) for e in got] == [(1, "s1", QID), (2, "s1", QID)]
    with pytest.raises(ProtocolError, match="not a stream name"):
        parse_data("dev-1", ("data", "bad stream"), GOOD)
    with pytest.raises(ProtocolError, match="unexpected solution topic"):
        parse_data("dev-1", ("batch",), GOOD)


def test_runs_keep_order_split_on_a_new_stream_and_at_the_size_bound() -> None:
    m = [
        Message(1, "a", 0.0, b"x" * 10),
        Message(2, "a", 0.0, b"x" * 10),
        Message(3, "b", 0.0, b"x" * 10),
        Message(4, "a", 0.0, b"x" * 10),
        Message(5, "a", 0.0, b"x" * 25),  # over 30 with 4: a run of its own
        Message(6, "a", 0.0, b"x" * 40),  # larger than the bound: alone
        Message(7, "a", 0.0, b"x"),
    ]
    got = [[x.seq for x in run] for run in batch.runs(m, max_bytes=30)]
    assert got == [[1, 2], [3], [4], [5], [6], [7]]
    assert list(batch.runs([], max_bytes=30)) == []


@given(st.binary(max_size=200))
def test_any_bytes_after_the_magic_decode_or_are_refused_with_a_protocol_error(
    tail: bytes,
) -> None:
    try:
        got = batch.decode(batch.MAGIC + b"\x01" + tail)
    except ProtocolError:
        return
    assert got.items and all(a.seq < b.seq for a, b in zip(got.items, got.items[1:], strict=False))
