"""Update job decision (agent update/decide.py): parsing, and each refusal with its reason code."""

from __future__ import annotations

import json
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
