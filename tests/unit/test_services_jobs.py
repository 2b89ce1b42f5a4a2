"""Update job state machine (management/jobs.py): every legal and illegal transition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twelvefactor_agent.protocol.states import FINAL, TRANSITIONS
from twelvefactor_agent.protocol.states import JOB_STATES as STATES
from twelvefactor_services.management import jobstore
from twelvefactor_services.management.jobs import (
    JobReport,
    JobReportError,
    JobState,
    TransitionError,
    advance,
    parse_job_report,
)


def report(state: str, percent: int | None = None, reason: str | None = None) -> JobReport:
    return JobReport("j-1", state, percent, reason, 10.0)


def payload(**kw: Any) -> bytes:
    doc: dict[str, Any] = {"v": 1, "job": "j-abc", "state": "downloading", "percent": 5, "ts": 1.5}
    doc.update(kw)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def test_happy_path_to_succeeded() -> None:
    s = JobState()
    for st, pct in [
        ("downloading", 0),
        ("downloading", 50),
        ("downloading", 100),
        ("installing", 10),
        ("installing", 100),
        ("rebooting", None),
        ("verifying", None),
        ("succeeded", None),
    ]:
        s = advance(s, report(st, pct))
        assert (s.state, s.percent) == (st, pct)
    assert s.final and s.updated == 10.0


def test_download_percent_may_go_down_after_a_refused_file() -> None:
    s = advance(advance(JobState(), report("downloading", 80)), report("downloading", 0))
    assert s.percent == 0


@pytest.mark.parametrize("src", STATES)
@pytest.mark.parametrize("dst", [s for s in STATES if s != "queued"])
def test_transition_table(src: str, dst: str) -> None:
    s = JobState(src)
    r = report(dst, 1 if dst in ("downloading", "installing") else None, "x")
    if dst in TRANSITIONS[src]:
        assert advance(s, r).state == dst
    else:
        with pytest.raises(TransitionError, match=f"{src} -> {dst}"):
            advance(s, r)


def test_final_states_accept_nothing() -> None:
    for st in FINAL:
        assert TRANSITIONS[st] == frozenset()


def test_success_only_after_verifying() -> None:
    for st in STATES:
        if "succeeded" in TRANSITIONS[st]:
            assert st == "verifying"


def test_refusal_from_queued_and_rollback_after_reboot() -> None:
    assert advance(JobState(), report("failed", reason="wrong_hardware")).reason == "wrong_hardware"
    s = advance(JobState("rebooting"), report("rolled_back", reason="bootcount"))
    assert s.state == "rolled_back" and s.final


def test_parse_valid_report() -> None:
    r = parse_job_report(payload())
    assert r == JobReport("j-abc", "downloading", 5, None, 1.5)
    r = parse_job_report(payload(state="failed", percent=..., reason="no_space"))
    assert (r.state, r.percent, r.reason) == ("failed", None, "no_space")
    # a percent on a state without one is ignored
    assert parse_job_report(payload(state="rebooting", percent=3)).percent is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (payload(v=2), "schema version"),
        (payload(job="x"), "field 'job' is not valid"),
        (payload(job=...), "field 'job' is not a non-empty string"),
        (payload(state="queued"), "invalid state"),
        (payload(state="bogus"), "invalid state"),
        (payload(percent=101), "percent"),
        (payload(percent=True), "percent"),
        (payload(percent=...), "percent"),
        (payload(state="failed", reason=None), "failed needs a reason"),
        (payload(state="failed", reason="x" * 600), "field 'reason' is longer than 512"),
        (payload(ts="now"), "field 'ts' is not a finite number"),
        (payload(ts=...), "missing field 'ts'"),
    ],
)
def test_parse_rejects(raw: bytes, message: str) -> None:
    with pytest.raises(JobReportError, match=message):
        parse_job_report(raw)


def test_bytes_sent_count_on_the_devices_unfinished_job_for_that_artifact(tmp_path: Path) -> None:
    db = jobstore.connect(tmp_path / "registry.db")
    art, other = "a" * 64, "b" * 64
    for job, artifact, created in (("j-old", art, 1.0), ("j-new", art, 2.0), ("j-b", other, 3.0)):
        db.execute(
            "INSERT INTO update_jobs (id, artifact, target, created) VALUES (?, ?, 'x', ?)",
            (job, artifact, created),
        )
    rows = [("j-old", "dev-1", "succeeded"), ("j-new", "dev-1", "downloading")]
    rows += [("j-new", "dev-2", "downloading"), ("j-b", "dev-1", "queued")]
    for job, device, state in rows:
        db.execute(
            "INSERT INTO device_jobs (job, device, state, updated) VALUES (?, ?, ?, 0)",
            (job, device, state),
        )
    db.commit()
    jobstore.add_sent(db, "dev-1", art, 1000)
    jobstore.add_sent(db, "dev-1", art, 24)
    sent = {(j, d): n for j, d, n in db.execute("SELECT job, device, sent_bytes FROM device_jobs")}
    # the finished job of the same artifact, another device, another artifact: untouched
    assert sent == {
        ("j-old", "dev-1"): 0,
        ("j-new", "dev-1"): 1024,
        ("j-new", "dev-2"): 0,
        ("j-b", "dev-1"): 0,
    }
    got = jobstore.get_job(db, "j-new")
    assert got is not None
    assert [(d["device"], d["sent_bytes"]) for d in got["devices"]] == [
        ("dev-1", 1024),
        ("dev-2", 0),
    ]
