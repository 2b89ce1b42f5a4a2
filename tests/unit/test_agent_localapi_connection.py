"""A local-API connection's protocol, without a socket: framing, limits, answer order."""

from __future__ import annotations

import base64
import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twelvefactor_agent.localapi.connection import (
    CLOSED,
    MAX_LINE,
    MAX_PENDING_OUTPUT,
    NEED_DATA,
    CallRequest,
    Connection,
    Publish,
    Received,
    Refusal,
    Request,
    Status,
)

LIMIT = 1000  # max_message_bytes


def publish(stream: str, payload: bytes) -> bytes:
    doc = {"op": "publish", "stream": stream, "payload": base64.b64encode(payload).decode()}
    return json.dumps(doc).encode() + b"\n"


def drain(conn: Connection) -> tuple[list[Received], object]:
    """Every request available now, and what ended the run (NEED_DATA or CLOSED)."""
    got = []
    while isinstance(event := conn.next_request(LIMIT), Received):
        got.append(event)
    return got, event


def answer_all(conn: Connection, received: list[Received]) -> None:
    for slot, request in received:
        conn.answer(slot, {"ok": True, "for": repr(request)[:40]})


def output(conn: Connection) -> list[dict[str, object]]:
    data = b""
    while chunk := conn.data_to_send():
        data += chunk
        conn.sent(len(chunk))
    return [json.loads(line) for line in data.splitlines()]


requests_lines = st.lists(
    st.one_of(
        st.builds(publish, st.sampled_from(["a", "b.c", "x_1"]), st.binary(max_size=40)),
        st.just(b'{"op":"status"}\n'),
        st.just(b"\n"),  # blank: skipped
        st.just(b"not json\n"),
        st.just(b'{"op":"call","service":"weather"}\n'),
        st.just(b'{"op":"call","service":"Bad Name"}\n'),
    ),
    max_size=20,
)


@given(requests_lines, st.lists(st.integers(0, 2000), max_size=12))
def test_any_split_of_the_stream_gives_the_same_requests(
    lines: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(lines)
    whole = Connection()
    whole.receive_data(stream)
    whole.receive_data(b"")
    expected, end = drain(whole)
    assert end is CLOSED

    split = Connection()
    got: list[Received] = []
    edges = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(edges):
        split.receive_data(stream[a:b])
        more, end = drain(split)
        assert end is NEED_DATA
        got += more
    split.receive_data(b"")
    more, end = drain(split)
    got += more
    assert end is CLOSED
    assert got == expected
    assert [r.slot for r in got] == list(range(len(got)))
    assert len(got) == sum(1 for line in lines if line.strip())


def test_requests_parse_to_what_they_ask() -> None:
    conn = Connection()
    conn.receive_data(publish("s", b"hi") + b'{"op":"status"}\n{"op":"nope"}\n')
    conn.receive_data(b'{"op":"call","service":"weather","timeout":5}\n')
    got, end = drain(conn)
    assert end is NEED_DATA
    requests: list[Request] = [r.request for r in got]
    assert requests[:3] == [
        Publish("s", b"hi"),
        Status(),
        Refusal("bad_request", "unknown op 'nope'"),
    ]
    call = requests[3]
    assert isinstance(call, CallRequest) and call.call.timeout == 5.0


def test_a_last_line_without_newline_counts_at_eof() -> None:
    conn = Connection()
    conn.receive_data(b'{"op":"status"}')
    assert drain(conn) == ([], NEED_DATA)
    conn.receive_data(b"")
    got, end = drain(conn)
    assert [r.request for r in got] == [Status()] and end is CLOSED
    assert not conn.done, "its answer is owed"
    answer_all(conn, got)
    assert output(conn)[0]["ok"] is True
    assert conn.done


def test_an_overlong_line_is_refused_and_ends_the_requests() -> None:
    conn = Connection()
    conn.receive_data(b'{"op":"status"}\n' + b"x" * MAX_LINE)
    assert conn.reading, "exactly 1 MiB of a line may still end"
    got, end = drain(conn)
    assert end is NEED_DATA
    conn.receive_data(b"x")
    assert not conn.reading, "over 1 MiB with no newline: stop reading"
    more, end = drain(conn)
    got += more
    assert [r.request for r in got] == [
        Status(),
        Refusal("bad_request", "line longer than 1 MiB"),
    ]
    assert end is CLOSED
    conn.receive_data(b'\n{"op":"status"}\n')  # what follows is not read
    assert drain(conn) == ([], CLOSED)
    answer_all(conn, got)
    assert [a["ok"] for a in output(conn)] == [True, True]
    assert conn.done


def test_an_overlong_line_with_its_newline_is_refused_too() -> None:
    conn = Connection()
    conn.receive_data(b"y" * (MAX_LINE + 1) + b'\n{"op":"status"}\n')
    got, end = drain(conn)
    assert [r.request for r in got] == [Refusal("bad_request", "line longer than 1 MiB")]
    assert end is CLOSED


def test_a_line_of_exactly_the_limit_is_parsed() -> None:
    conn = Connection()
    conn.receive_data(b" " * (MAX_LINE - 15) + b'{"op":"status"}\n')
    got, _ = drain(conn)
    assert [r.request for r in got] == [Status()]


def test_answers_leave_in_request_order_behind_a_slow_call() -> None:
    conn = Connection()
    conn.receive_data(
        b'{"op":"status"}\n{"op":"call","service":"weather"}\n' + publish("s", b"1") * 2
    )
    (status, call, p1, p2), _ = drain(conn)
    conn.answer(status.slot, {"n": 0})
    conn.answer(p1.slot, b'{"n":2}\n')
    conn.answer(p2.slot, {"n": 3})
    assert output(conn) == [{"n": 0}], "the answers behind the call wait"
    assert not conn.wants_write
    conn.answer(call.slot, {"n": 1})
    assert output(conn) == [{"n": 1}, {"n": 2}, {"n": 3}]
    with pytest.raises(ValueError, match="not waiting"):
        conn.answer(call.slot, {"twice": True})


def test_partial_sends_keep_the_rest() -> None:
    conn = Connection()
    conn.receive_data(b'{"op":"status"}\n')
    ((slot, _),), _ = drain(conn)
    conn.answer(slot, b'{"ok":true}\n')
    assert conn.data_to_send() == b'{"ok":true}\n'
    conn.sent(4)
    assert conn.data_to_send() == b'":true}\n'
    conn.sent(8)
    assert conn.data_to_send() == b"" and not conn.wants_write


def test_a_client_that_does_not_read_stops_being_read() -> None:
    conn = Connection()
    big: dict[str, object] = {"pad": "z" * 1000}
    answers = 0
    while conn.reading:
        conn.receive_data(b'{"op":"status"}\n')
        ((slot, _),), _ = drain(conn)
        conn.answer(slot, big)
        answers += 1
    assert answers == MAX_PENDING_OUTPUT // len(b'{"pad":"%s"}\n' % (b"z" * 1000)) + 1
    while chunk := conn.data_to_send():
        conn.sent(len(chunk))
        if conn.reading:
            break
    assert conn.reading, "it read its answers: read it again"


def test_answers_waiting_behind_a_call_count_towards_the_limit() -> None:
    conn = Connection()
    conn.receive_data(b'{"op":"call","service":"weather"}\n')
    (call,), _ = drain(conn)
    while conn.reading:
        conn.receive_data(b'{"op":"status"}\n')
        ((slot, _),), _ = drain(conn)
        conn.answer(slot, {"pad": "z" * 1000})
    assert not conn.wants_write, "nothing can leave before the call's answer"
    conn.answer(call.slot, {"call": True})
    assert output(conn)[0] == {"call": True}
    assert conn.reading


def test_eof_with_a_call_pending_waits_for_its_answer() -> None:
    conn = Connection()
    conn.receive_data(b'{"op":"call","service":"weather"}\n{"op":"status"}\n')
    conn.receive_data(b"")
    (call, status), end = drain(conn)
    assert end is CLOSED and not conn.reading
    conn.answer(status.slot, {"status": True})
    assert not conn.done and not conn.wants_write
    conn.answer(call.slot, {"call": True})
    assert not conn.done, "answers still to send"
    assert output(conn) == [{"call": True}, {"status": True}]
    assert conn.done


def test_an_aborted_connection_drops_late_answers() -> None:
    conn = Connection()
    conn.receive_data(b'{"op":"call","service":"weather"}\n')
    (call,), _ = drain(conn)
    conn.abort()
    assert conn.done and not conn.reading
    conn.answer(call.slot, {"late": True})  # a call's answer after the client went away
    assert conn.data_to_send() == b""
    assert drain(conn) == ([], CLOSED)
