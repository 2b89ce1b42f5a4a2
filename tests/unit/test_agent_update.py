"""Update job decision (agent update/decide.py): parsing, and each refusal with its reason code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twelvefactor_agent.update.decide import (
    DOWNGRADE,
    NO_HWREVISION,
    NO_SPACE,
    SAME_VERSION,
    VERSION_UNKNOWN,
    WRONG_DEVICE,
    WRONG_HARDWARE,
    Delta,
    JobError,
    Policy,
    ProgressGate,
    UpdateJob,
    decide,
    hardware_matches,
    parse_job,
    refusal_payload,
    report_payload,
    version_key,
)

SHA = "ab" * 32
MiB = 1024 * 1024


def doc(**kw: Any) -> bytes:
    d: dict[str, Any] = {
        "v": 1,
        "job": "j-1",
        "device": "dev-001",
        "version": "1.2.0",
        "hardware": {"qemux86-64": ["1.0"]},
        "sha256": SHA,
        "size": 100 * MiB,
        "url": "https://10.0.0.1:8443/artifacts/x.swu",
    }
    d.update(kw)
    return json.dumps({k: v for k, v in d.items() if v is not ...}).encode()


def run(job: UpdateJob | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "device": "dev-001",
        "hwrevision": "qemux86-64 1.0",
        "os_version": "1.1",
        "free_bytes": 1000 * MiB,
    }
    args.update(kw)
    return decide(job or parse_job(doc()), **args)


def test_parse_and_accept() -> None:
    job = parse_job(doc())
    assert job.hardware == {"qemux86-64": ("1.0",)} and job.size == 100 * MiB
    assert job.install == "now"  # no `install` field: install at once
    assert run(job) is None
    assert parse_job(doc(install="hold")).install == "hold"
    assert job.delta is None  # no `delta`: the full .swu only


DSHA = "cd" * 32
DELTA = {"sha256": DSHA, "size": 2 * MiB, "url": "https://10.0.0.1:8443/artifacts/d.swu"}


def test_parse_a_job_with_a_delta() -> None:
    job = parse_job(doc(delta=DELTA))
    assert job.delta == Delta(DSHA, 2 * MiB, "https://10.0.0.1:8443/artifacts/d.swu")
    # the full .swu stays the job's own: what is installed if the delta fails
    assert (job.sha256, job.size, job.url) == (
        SHA,
        100 * MiB,
        "https://10.0.0.1:8443/artifacts/x.swu",
    )
    assert parse_job(doc(delta=DELTA, install="hold")).delta == job.delta
    assert run(job) is None


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        (None, "delta must be an object"),
        ("https://10.0.0.1:8443/artifacts/d.swu", "delta must be an object"),
        ([DSHA, 2 * MiB, DELTA["url"]], "delta must be an object"),
        ({}, "delta: field 'sha256' is not a non-empty string"),
        ({**DELTA, "sha256": "CD" * 32}, "delta: field 'sha256' is not valid"),
        ({**DELTA, "sha256": "cd" * 31}, "delta: field 'sha256' is not valid"),
        ({k: v for k, v in DELTA.items() if k != "size"}, "delta: field 'size' is not an integer"),
        ({**DELTA, "size": 0}, "delta: field 'size' is not an integer"),
        ({**DELTA, "size": "2"}, "delta: field 'size' is not an integer"),
        ({**DELTA, "size": True}, "delta: field 'size' is not an integer"),
        ({**DELTA, "size": 1.5}, "delta: field 'size' is not an integer"),
        ({k: v for k, v in DELTA.items() if k != "url"}, "delta: field 'url' is not a non-empty"),
        ({**DELTA, "url": "http://10.0.0.1/d.swu"}, "delta: url must be https"),
        ({**DELTA, "url": "https:///d.swu"}, "delta: url must be https"),
    ],
)
def test_parse_rejects_a_malformed_delta(delta: Any, message: str) -> None:
    with pytest.raises(JobError, match=message):
        parse_job(doc(delta=delta))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not JSON"),
        (b"3", "not a JSON object"),
        (doc(v=...), "schema version"),
        (doc(job="job-1"), "field 'job' is not valid"),
        (doc(version="1.2-rc1"), "field 'version' is not valid"),
        (doc(version=...), "field 'version' is not a non-empty string"),
        (doc(sha256="AB" * 32), "sha256"),
        (doc(size=0), "field 'size' is not an integer"),
        (doc(size=True), "field 'size' is not an integer"),
        (doc(url="http://10.0.0.1/x.swu"), "url must be https"),
        (doc(hardware={}), "hardware must be"),
        (doc(hardware={"b": []}), "hardware\\['b'\\]"),
        (doc(hardware={"b": [1]}), "hardware\\['b'\\]"),
        (doc(device=""), "field 'device' is not a non-empty string"),
        (doc(install="later"), "install must be one of now, hold, cancel"),
        (doc(install=None), "install must be one of"),
    ],
)
def test_parse_rejects(raw: bytes, message: str) -> None:
    with pytest.raises(JobError, match=message):
        parse_job(raw)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"device": "dev-002"}, WRONG_DEVICE),
        ({"hwrevision": None}, NO_HWREVISION),
        ({"hwrevision": "qemux86-64 2.0"}, WRONG_HARDWARE),
        ({"hwrevision": "raspberrypi4-64 1.0"}, WRONG_HARDWARE),
        ({"hwrevision": "qemux86-64"}, WRONG_HARDWARE),
        ({"os_version": "1.2"}, SAME_VERSION),
        ({"os_version": "1.2.0.0"}, SAME_VERSION),
        ({"os_version": "1.10"}, DOWNGRADE),
        ({"os_version": None}, VERSION_UNKNOWN),
        ({"os_version": "trixie/sid"}, VERSION_UNKNOWN),
        ({"free_bytes": 100 * MiB}, NO_SPACE),
    ],
)
def test_refusals(kw: dict[str, Any], reason: str) -> None:
    refusal = run(**kw)
    assert refusal is not None and refusal.reason == reason and refusal.detail


def test_checks_run_in_order_device_first() -> None:
    r = run(device="other", hwrevision=None, os_version="9", free_bytes=0)
    assert r.reason == WRONG_DEVICE


def test_downgrade_policy_allows_older_same_and_unknown() -> None:
    policy = Policy(allow_downgrade=True)
    for running in ("1.10", "1.2", None):
        assert run(os_version=running, policy=policy) is None


def test_space_counts_the_partial_download_and_the_reserve() -> None:
    policy = Policy(reserve_bytes=10 * MiB)
    assert run(free_bytes=110 * MiB, policy=policy) is None
    assert run(free_bytes=110 * MiB - 1, policy=policy).reason == NO_SPACE
    assert run(free_bytes=20 * MiB, partial_bytes=90 * MiB, policy=policy) is None


def test_version_key_numeric_not_lexical() -> None:
    assert version_key("1.10") > version_key("1.9")
    assert version_key("2") == version_key("2.0.0")
    with pytest.raises(ValueError):
        version_key("1.x")


def test_hardware_rules() -> None:
    hw = {"qemux86-64": ("1.0", "#RE:^2\\.[0-9]+$"), "": ("9",)}
    assert hardware_matches(hw, "qemux86-64 2.7")
    assert not hardware_matches(hw, "qemux86-64 3.0")
    assert hardware_matches(hw, "anyboard 9")
    assert not hardware_matches({"b": ("#RE:(",)}, "b (")  # a broken pattern matches nothing


def test_reports_are_what_the_service_parses() -> None:
    from twelvefactor_services.management.jobs import parse_job_report

    r = parse_job_report(report_payload("j-1", "downloading", ts=5.0, percent=40))
    assert (r.job, r.state, r.percent, r.reason) == ("j-1", "downloading", 40, None)
    job = parse_job(doc())
    refusal = run(job, hwrevision="qemux86-64 2.0")
    r = parse_job_report(refusal_payload(job, refusal, 6.0))
    assert r.state == "failed" and r.reason is not None and r.reason.startswith("wrong_hardware: ")


def test_reports_saying_path_and_fallback_are_what_the_service_parses() -> None:
    from twelvefactor_services.management.jobs import parse_job_report

    raw = report_payload("j-1", "downloading", ts=5.0, percent=0, path="full", fallback="why")
    r = parse_job_report(raw)
    assert (r.state, r.percent, r.path, r.fallback) == ("downloading", 0, "full", "why")
    r = parse_job_report(report_payload("j-1", "installing", ts=5.0, percent=3, path="delta"))
    assert (r.path, r.fallback) == ("delta", None)
    assert b"path" not in report_payload("j-1", "downloading", ts=5.0, percent=0)


def test_the_workers_reports_say_the_artifact_in_hand_and_why_a_delta_was_given_up(
    tmp_path: Path,
) -> None:
    """The worker (not started: its machine fed here, its quick actions carried out)
    publishes each report with the record's path and fallback, as the service reads them."""
    from twelvefactor_agent.update.machine import DryRun, Facts, Fetch, UpdateMachine
    from twelvefactor_agent.update.worker import Paths, Updater
    from twelvefactor_services.management.jobs import JobReport, parse_job_report

    sent: list[JobReport] = []

    def publish(payload: bytes, acked: object) -> bool:
        sent.append(parse_job_report(payload))
        return False  # offline for the final report: no thread waits for its ack

    updater = Updater(
        device="dev-001",
        identity=(tmp_path / "c", tmp_path / "k", tmp_path / "a"),
        paths=Paths(tmp_path / "data", tmp_path / "run"),
        publish=publish,
    )
    updater.paths.dir.mkdir(parents=True)
    updater.machine = UpdateMachine(device="dev-001", uniform=lambda low, high: high)
    facts = Facts("qemux86-64 1.0", "1.1", 1000 * MiB, 0, "A")

    # a refusal, before any record: no path
    updater._feed(lambda m: m.received(doc(job="j-0", device="dev-002")))
    updater._feed(lambda m: m.examined(facts))
    assert [(r.job, r.state, r.path, r.fallback) for r in sent] == [("j-0", "failed", None, None)]
    sent.clear()

    updater._feed(lambda m: m.received(doc(delta=DELTA)))
    updater._feed(lambda m: m.examined(facts))
    updater._feed(lambda m: m.surveyed(running_slot="A", boot_id="b-1", env={"slot": "A"}))
    assert isinstance(updater._feed(lambda m: m.measured(None)), Fetch)
    updater._feed(lambda m: m.fetched())
    assert updater._feed(lambda m: m.measured(2 * MiB)) == DryRun(DSHA)
    updater._feed(lambda m: m.dry_run_refused("no source slot"))
    assert updater._feed(lambda m: m.measured(None)) == Fetch(
        "https://10.0.0.1:8443/artifacts/x.swu", SHA, 100 * MiB
    )
    for _ in range(5):
        updater._feed(lambda m: m.fetch_failed("HTTP 404"))
        updater._feed(lambda m: m.waited())
    why = "swupdate_refused: no source slot"
    assert [(r.state, r.percent, r.path, r.fallback) for r in sent] == [
        ("downloading", 0, "delta", None),
        ("installing", 0, "delta", None),
        ("downloading", 0, "full", why),
        ("failed", None, "full", why),
    ]
    assert sent[-1].reason == "download_failed: HTTP 404"
    record = updater.paths.record.read_bytes()
    assert b'"fallback": "swupdate_refused: no source slot"' in record


def test_progress_gate() -> None:
    gate = ProgressGate(step=10)
    sent = [
        (s, p)
        for s, p in [("downloading", p) for p in (0, 3, 9, 10, 15, 20, 99, 100, 100)]
        + [("installing", 0), ("installing", 5)]
        if gate.should_report(s, p)
    ]
    assert sent == [
        ("downloading", 0),
        ("downloading", 10),
        ("downloading", 20),
        ("downloading", 99),
        ("downloading", 100),
        ("installing", 0),
    ]
    assert gate.percent(1, 3) == 33 and gate.percent(5, 0) == 100
    with pytest.raises(ValueError, match="step"):
        ProgressGate(0)
