"""The call table: one deadline, one bound, late answers dropped, lost connections."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from helpers import MINIMAL_AGENT_CONFIG
from twelvefactor_agent.config.settings import validate
from twelvefactor_agent.forward.queue import Queue
from twelvefactor_agent.localapi.calltable import (
    CALL_GRACE,
    MAX_CALLS,
    CallEvent,
    CallTable,
    Lost,
    Reply,
)
from twelvefactor_agent.session.mqtt import LastError
from twelvefactor_agent.session.solution import SolutionSession

OK = {"ok": True, "status": 200, "headers": {}, "body": ""}


def test_an_answer_reaches_its_caller_once() -> None:
    table: CallTable[str] = CallTable()
    table.start(10.0, b"a", 5.0, route=1, token="conn 1 slot 0")
    table.start(10.0, b"b", 5.0, route=1, token="conn 2 slot 3")
    assert table.receive(Reply(b"b", OK)) == [("conn 2 slot 3", OK)]
    assert table.receive(Reply(b"b", OK)) == [], "a duplicate is dropped"
    assert table.complete(b"unknown", OK) == [], "not ours"
    assert len(table) == 1


def test_the_deadline_is_the_timeout_and_the_grace() -> None:
    table: CallTable[str] = CallTable()
    assert table.next_deadline() is None
    table.start(100.0, b"a", 5.0, route=1, token="a")
    table.start(101.0, b"b", 2.0, route=1, token="b")
    assert table.next_deadline() == 103.0 + CALL_GRACE
    assert table.poll(103.0 + CALL_GRACE - 0.01) == []
    ((token, answer),) = table.poll(103.0 + CALL_GRACE)
    assert token == "b"
    assert answer == {
        "ok": False,
        "error": "timeout",
        "message": "no answer from the solution service within 2 s",
    }
    assert table.next_deadline() == 105.0 + CALL_GRACE
    assert [t for t, _ in table.poll(1000.0)] == ["a"]
    assert table.next_deadline() is None and len(table) == 0


def test_an_answer_after_the_deadline_is_dropped() -> None:
    table: CallTable[str] = CallTable()
    table.start(0.0, b"a", 1.0, route=1, token="a")
    assert len(table.poll(1.0 + CALL_GRACE)) == 1
    assert table.complete(b"a", OK) == [], "the caller already has its timeout"


def test_at_most_max_calls_wait() -> None:
    table: CallTable[int] = CallTable()
    for i in range(MAX_CALLS):
        assert not table.full
        table.start(0.0, i.to_bytes(4, "big"), 30.0, route=1, token=i)
    assert table.full
    with pytest.raises(OverflowError):
        table.start(0.0, b"one more", 30.0, route=1, token=-1)
    table.complete((7).to_bytes(4, "big"), OK)
    assert not table.full, "an answer makes room"


def test_a_lost_connection_fails_its_own_calls_only() -> None:
    table: CallTable[str] = CallTable()
    table.start(0.0, b"a", 30.0, route=1, token="on 1")
    table.start(0.0, b"b", 30.0, route=2, token="on 2")
    ((token, answer),) = table.receive(Lost(1, "the connection was lost"))
    assert token == "on 1"
    assert answer == {"ok": False, "error": "unavailable", "message": "the connection was lost"}
    assert table.receive(Lost(1, "again")) == []
    assert table.complete(b"a", OK) == [], "its late answer is dropped"
    assert table.complete(b"b", OK) == [("on 2", OK)]


def test_the_solution_session_keeps_no_call_state_and_reports_its_losses(tmp_path: Path) -> None:
    config = validate(tomllib.loads(MINIMAL_AGENT_CONFIG))
    reports: list[CallEvent] = []
    sol = SolutionSession(
        config,
        Queue(tmp_path / "queue.db", config.queue),
        lambda session, online: None,
        LastError(),
        report_call=reports.append,
    )
    assert sol.send_call(b"a", b"{}", 5.0) is None, "offline: refused at once"
    sol.on_down()
    assert reports == [], "no connection yet: nothing was out"
    sol.on_up(None)  # type: ignore[arg-type]  # the hook does not use the client
    first = sol.route
    sol.on_down()
    sol.on_up(None)  # type: ignore[arg-type]
    assert sol.route > first, "each connection has its own route"
    sol.on_stopped()
    assert reports == [
        Lost(first, "the connection to the solution service was lost"),
        Lost(sol.route, "the agent is restarting its sessions"),
    ]
