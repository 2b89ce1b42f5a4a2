"""The metered profile's schedule (issue 18, item 2): when to check in and when to sleep."""

from __future__ import annotations

from pathlib import Path

import pytest
from twelvefactor_agent.config import settings
from twelvefactor_agent.config.settings import LinkSettings
from twelvefactor_agent.session.checkin import CheckinMachine, Progress, Sleep, Wake

pytestmark = pytest.mark.unit

LINK = LinkSettings("metered", 14400, 300, 65536, 3600)
IDLE = Progress(sessions_up=False, greeted=False, queue_bytes=0, oldest_age=None, busy=False)
DONE = Progress(sessions_up=True, greeted=True, queue_bytes=0, oldest_age=None, busy=False)


def test_a_check_in_at_boot_ends_once_its_work_is_done_then_the_next_is_scheduled() -> None:
    m = CheckinMachine(LINK)
    assert m.start(0.0) == [Wake("boot")] and m.awake
    assert m.poll(5.0, IDLE) == []  # connecting
    assert m.poll(6.0, DONE._replace(greeted=False)) == []  # retained messages not yet in
    assert m.poll(7.0, DONE._replace(queue_bytes=300)) == []  # the queue still draining
    assert m.poll(8.0, DONE._replace(busy=True)) == []  # a trial or an update under way
    assert m.poll(9.0, DONE) == [Sleep(9.0 + 14400, True)]
    assert not m.awake and m.next_wakeup() == 9.0 + 14400
    assert m.poll(9.0 + 14399, IDLE) == []
    assert m.poll(9.0 + 14400, IDLE) == [Wake("scheduled")]


def test_a_check_in_that_cannot_finish_ends_at_its_bound_and_is_tried_again_sooner() -> None:
    m = CheckinMachine(LINK)
    m.start(0.0)
    assert m.next_wakeup() == 300.0
    assert m.poll(299.0, IDLE) == []
    assert m.poll(300.0, IDLE) == [Sleep(300.0 + 3000, False)]  # 10 x checkin_max < 4 h
    # data piling up meanwhile does not wake it before the retry: no link, no point
    assert m.poll(400.0, IDLE._replace(queue_bytes=10**6, oldest_age=10**5)) == []
    assert m.poll(3300.0, IDLE) == [Wake("scheduled")]


def test_queued_data_wakes_it_early_by_size_or_age_and_an_application_may_ask() -> None:
    m = CheckinMachine(LINK)
    m.start(0.0)
    m.poll(1.0, DONE)
    assert m.poll(2.0, IDLE._replace(queue_bytes=65535, oldest_age=3599.0)) == []
    assert m.poll(3.0, IDLE._replace(queue_bytes=65536)) == [Wake("queue size")]
    m.poll(4.0, DONE)
    assert m.poll(5.0, IDLE._replace(queue_bytes=10, oldest_age=3600.0)) == [Wake("queue age")]
    m.poll(6.0, DONE)
    assert m.request(7.0) == [Wake("asked")]
    assert m.request(8.0) == []  # already checking in
    never_by_size = CheckinMachine(LINK._replace(early_bytes=0))
    never_by_size.start(0.0)
    never_by_size.poll(1.0, DONE)
    assert never_by_size.poll(2.0, IDLE._replace(queue_bytes=10**9)) == []


BASE = {
    "device": {"id": "dev-1", "certificate": "/c", "key": "/k", "ca": "/a"},
    "management": {"host": "10.77.0.1"},
    "solution": {"host": "10.77.0.1"},
}


def test_the_link_table_defaults_to_always_on_and_refuses_a_schedule_it_cannot_keep() -> None:
    assert settings.validate(BASE).link == LinkSettings("always-on", 14400, 300, 65536, 3600)
    metered = settings.validate({**BASE, "link": {"profile": "metered", "checkin_interval": 600}})
    assert metered.link == LinkSettings("metered", 600, 300, 65536, 3600)
    with pytest.raises(settings.ConfigError) as err:
        settings.validate({**BASE, "link": {"profile": "sometimes", "checkin_interval": 200}})
    assert err.value.problems == [
        "config: link.profile: 'sometimes' is not a profile (always-on or metered)",
    ]
    with pytest.raises(settings.ConfigError) as err:
        settings.validate({**BASE, "link": {"checkin_interval": 200}})
    assert err.value.problems == [
        "config: link.checkin_max: 300 is not shorter than link.checkin_interval (200)"
    ]


def test_the_agent_tells_its_link_to_the_update_worker_and_the_root_helper(
    tmp_path: Path,
) -> None:
    """Always on, awake, asleep: the update worker may download only while the link is
    open; twelvefactor-link gets the word and a request (its path unit waits for that file),
    once per change."""
    from twelvefactor_agent.agent import Agent
    from twelvefactor_agent.update.worker import Paths, Updater

    config = settings.validate(
        {**BASE, "agent": {"state_file": str(tmp_path / "run" / "state.json")}}
    )
    (tmp_path / "run").mkdir()
    agent = Agent(config)
    updater = Updater(
        device="dev-1",
        identity=(tmp_path / "c", tmp_path / "k", tmp_path / "a"),
        paths=Paths(tmp_path / "data", tmp_path / "run"),
        publish=lambda payload, acked: False,
    )  # not started: only its link gate is looked at
    agent.updater = updater
    word, request = tmp_path / "run" / "link", tmp_path / "run" / "link-request"

    agent._tell_link()
    assert word.read_text() == "always-on\n" and request.exists()
    assert updater.link_open.is_set()

    request.unlink()  # the helper took it
    agent._tell_link()
    assert not request.exists()  # no change, no request

    agent.link = CheckinMachine(LINK)
    agent.link.start(0.0)
    agent._tell_link()
    assert word.read_text() == "awake\n" and request.exists()
    assert updater.link_open.is_set()

    agent.link.poll(1.0, DONE)  # the check-in's work is done: asleep
    agent._tell_link()
    assert word.read_text() == "asleep\n"
    assert not updater.link_open.is_set()  # a download waits for the next check-in
