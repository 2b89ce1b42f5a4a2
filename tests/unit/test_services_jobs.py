"""Update job state machine (management/jobs.py): every legal and illegal transition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twelvefactor_agent.protocol.states import FINAL, TRANSITIONS
from twelvefactor_agent.protocol.states import JOB_STATES as STATES
from twelvefactor_agent.update.decide import Delta, parse_job
from twelvefactor_services.management import jobstore
from twelvefactor_services.management.artifacts import Artifact
from twelvefactor_services.management.jobs import (
    MAX_REASON,
    JobReport,
    JobReportError,
    JobState,
    TransitionError,
    advance,
    parse_job_report,
    replayed,
)
from twelvefactor_services.management.store import Db


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
    db = Db(tmp_path / "registry.db")
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


# -- delta updates: the path a device is on, why it gave a delta up ---------------------------


def test_installing_may_go_back_to_downloading_a_delta_given_up_for_the_full_swu() -> None:
    assert "downloading" in TRANSITIONS["installing"]
    s = advance(JobState("installing", 60), report("downloading", 0))
    assert (s.state, s.percent) == ("downloading", 0)


def test_parse_report_with_path_and_fallback() -> None:
    r = parse_job_report(payload(path="delta"))
    assert (r.path, r.fallback) == ("delta", None)
    r = parse_job_report(payload(path="full", fallback="install_failed: delta handler"))
    assert (r.path, r.fallback) == ("full", "install_failed: delta handler")
    assert parse_job_report(payload(path=None, fallback=None)) == parse_job_report(payload())
    assert parse_job_report(payload(fallback="x" * MAX_REASON)).fallback == "x" * MAX_REASON


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (payload(path="zck"), "invalid path 'zck'"),
        (payload(path="Delta"), "invalid path 'Delta'"),
        (payload(path=""), "invalid path ''"),
        (payload(path=1), "invalid path 1"),
        (payload(path=["delta"]), "invalid path"),
        (payload(fallback="x" * (MAX_REASON + 1)), "field 'fallback' is longer than 512"),
        (payload(fallback=5), "field 'fallback' is not a string"),
    ],
)
def test_parse_rejects_a_bad_path_or_fallback(raw: bytes, message: str) -> None:
    with pytest.raises(JobReportError, match=message):
        parse_job_report(raw)


def _one_job(tmp_path: Path) -> Any:
    db = Db(tmp_path / "registry.db")
    job = jobstore.insert_job(db, "a" * 64, ["dev-1", "dev-2"], "group:g", 1.0)
    return db, job


def _devices(db: Any, job: str) -> dict[str, tuple[Any, ...]]:
    got = jobstore.get_job(db, job)
    assert got is not None
    return {
        d["device"]: (d["state"], d["percent"], d["path"], d["fallback"]) for d in got["devices"]
    }


def test_reports_store_the_path_and_fallback_and_get_job_shows_them(tmp_path: Path) -> None:
    db, job = _one_job(tmp_path)
    # a job no device has reported on yet says nothing of either
    assert _devices(db, job)["dev-1"] == ("queued", None, None, None)

    def apply(r: JobReport) -> jobstore.Outcome:
        return jobstore.apply_report(db, "dev-1", r)

    assert apply(JobReport(job, "downloading", 10, None, 2.0, "delta")).after == "downloading"
    assert _devices(db, job)["dev-1"] == ("downloading", 10, "delta", None)
    apply(JobReport(job, "installing", 5, None, 3.0, "delta"))
    why = "swupdate_refused: delta handler: no source"
    out = apply(JobReport(job, "downloading", 0, None, 4.0, "full", why))
    assert (out.before, out.after, out.ignored) == ("installing", "downloading", None)
    assert _devices(db, job)["dev-1"] == ("downloading", 0, "full", why)
    # a report without them (an agent older than delta updates, say) keeps what was said
    apply(JobReport(job, "downloading", 40, None, 5.0))
    assert _devices(db, job)["dev-1"] == ("downloading", 40, "full", why)
    apply(JobReport(job, "failed", None, "download_failed: HTTP 404", 6.0, "full", why))
    assert _devices(db, job)["dev-1"] == ("failed", None, "full", why)
    # the other device of the job: untouched
    assert _devices(db, job)["dev-2"] == ("queued", None, None, None)
    listed = [j for j in jobstore.list_jobs(db) if j["id"] == job]
    assert [(d["path"], d["fallback"]) for d in listed[0]["devices"]] == [
        ("full", why),
        (None, None),
    ]


def test_an_ignored_report_stores_neither_path_nor_fallback(tmp_path: Path) -> None:
    db, job = _one_job(tmp_path)
    jobstore.apply_report(db, "dev-1", JobReport(job, "downloading", 10, None, 2.0, "delta"))
    # not a legal transition (downloading -> verifying): nothing of it is kept
    out = jobstore.apply_report(
        db, "dev-1", JobReport(job, "verifying", None, None, 3.0, "full", "why")
    )
    assert out.ignored is not None and out.after is None
    assert _devices(db, job)["dev-1"] == ("downloading", 10, "delta", None)
    # a job that is not the device's
    out = jobstore.apply_report(
        db, "dev-9", JobReport(job, "downloading", 10, None, 3.0, "full", "why")
    )
    assert out.ignored == "no such job for this device"


def test_a_registry_from_before_delta_updates_gains_the_columns(tmp_path: Path) -> None:
    db, job = _one_job(tmp_path)
    db.execute("ALTER TABLE device_jobs DROP COLUMN path")
    db.execute("ALTER TABLE device_jobs DROP COLUMN fallback")
    # made before the migrations, too (so before shards)
    db.execute("DROP TABLE management_schema")
    for table in ("devices", "enrolments", "tunnel_peers"):
        db.execute(f"ALTER TABLE {table} DROP COLUMN shard")
    db.execute("ALTER TABLE devices DROP COLUMN os_version")  # and before 0003
    db.close()
    db = Db(tmp_path / "registry.db")
    assert _devices(db, job)["dev-1"] == ("queued", None, None, None)
    jobstore.apply_report(db, "dev-1", JobReport(job, "downloading", 0, None, 2.0, "delta"))
    assert _devices(db, job)["dev-1"] == ("downloading", 0, "delta", None)


BASE = "https://10.99.0.1:8443/"


def test_the_job_document_names_the_delta_when_the_artifact_has_one() -> None:
    sha, dsha = "a" * 64, "d" * 64
    plain = Artifact(sha, "2.0", {"qemux86-64": ["1.0"]}, 5000, 1.0)
    doc = json.loads(jobstore.job_document("j-000000000001", "dev-1", plain, BASE))
    assert "delta" not in doc
    assert (doc["sha256"], doc["size"], doc["url"]) == (
        sha,
        5000,
        f"https://10.99.0.1:8443/artifacts/{sha}.swu",
    )
    delta = {"sha256": dsha, "size": 300, "zck": "e" * 64, "zck_size": 4000}
    with_delta = Artifact(sha, "2.0", {"qemux86-64": ["1.0"]}, 5000, 1.0, delta)
    raw = jobstore.job_document("j-000000000001", "dev-1", with_delta, BASE, "hold")
    doc = json.loads(raw)
    # the delta's .swu, served beside the full one; its chunks' .zck is named inside it
    assert doc["delta"] == {
        "sha256": dsha,
        "size": 300,
        "url": f"https://10.99.0.1:8443/artifacts/{dsha}.swu",
    }
    assert (doc["sha256"], doc["size"], doc["install"]) == (sha, 5000, "hold")
    # what the agent reads of it
    job = parse_job(raw)
    assert job.delta == Delta(dsha, 300, f"https://10.99.0.1:8443/artifacts/{dsha}.swu")
    assert (job.sha256, job.size) == (sha, 5000) and job.install == "hold"


def test_an_ended_job_is_cleared_and_a_quiet_one_is_offered_again(tmp_path: Path) -> None:
    """A final report lost on the way (a service copy killed with it in flight, a broker
    restart) must still arrive: an online device's job with no report for a while is
    offered again, and the device answers a job it finished with its final report again.
    Once the final report is in, the retained job is cleared (docs/protocol.md)."""
    db, job = _one_job(tmp_path)
    db.executemany(
        "INSERT INTO devices (id, first_seen, online) VALUES (?, 0, ?)",
        [("dev-1", 1), ("dev-2", 0)],
    )

    def pending() -> list[tuple[str, str, bool]]:
        return [(d, j, ended) for d, j, _, _, ended in jobstore.unpublished(db)]

    assert pending() == [("dev-1", job, False), ("dev-2", job, False)]
    for device in ("dev-1", "dev-2"):
        jobstore.mark_published(db, device, job, "now", 10.0)
    assert pending() == []
    # quiet since the creation (1.0) and the offer (10.0): not yet at 100 s ...
    assert jobstore.offer_quiet_again(db, 100.0, quiet=600.0) == []
    # ... at 700 s: dev-1 only (dev-2 is offline: its retained job waits for its connect)
    assert jobstore.offer_quiet_again(db, 700.0, quiet=600.0) == [("dev-1", job)]
    assert pending() == [("dev-1", job, False)]
    jobstore.mark_published(db, "dev-1", job, "now", 700.0)
    # a report resets the quiet time, and the offer just made counts too
    jobstore.apply_report(db, "dev-1", JobReport(job, "downloading", 10, None, 1000.0))
    assert jobstore.offer_quiet_again(db, 1500.0, quiet=600.0) == []
    assert pending() == []
    # a held download waits for the go, quiet by design: never offered again
    db.execute("UPDATE device_jobs SET install = 'hold' WHERE device = 'dev-1'")
    jobstore.apply_report(db, "dev-1", JobReport(job, "downloaded", None, None, 1100.0))
    assert jobstore.offer_quiet_again(db, 9000.0, quiet=600.0) == []
    db.execute("UPDATE device_jobs SET install = 'now' WHERE device = 'dev-1'")
    # the end: the retained document is to be cleared, once
    out = jobstore.apply_report(db, "dev-1", JobReport(job, "failed", None, "x: y", 1600.0))
    assert out.after == "failed"
    assert pending() == [("dev-1", job, True)]
    jobstore.mark_published(db, "dev-1", job, "now", 1601.0)
    assert pending() == []
    # the same final report again (the device answering an offer) changes nothing
    out = jobstore.apply_report(db, "dev-1", JobReport(job, "failed", None, "x: y", 1700.0))
    assert out.after is None and pending() == []
    # an ended job is never offered again
    assert jobstore.offer_quiet_again(db, 9999.0, quiet=600.0) == []


def test_a_step_the_job_has_passed_is_a_replay_and_a_skip_is_not() -> None:
    """The head of a final report's chain is ignored quietly; a report out of order that
    is not behind the job (installing -> succeeded) still gets its warning."""
    assert replayed("rebooting", "downloading") and replayed("rebooting", "installing")
    assert replayed("succeeded", "succeeded")  # the chain again, for a job offered again
    assert not replayed("installing", "succeeded")
    assert not replayed("queued", "rebooting")
    assert not replayed("failed", "succeeded")  # a device contradicting the job's end


CHAIN = ["downloading", "installing", "rebooting", "verifying"]


@pytest.mark.parametrize(
    "heard", ["queued", "downloading", "downloaded", "installing", "verifying"]
)
def test_a_final_report_with_its_steps_ends_the_job_from_wherever_the_service_stands(
    heard: str,
) -> None:
    """One message (not one per step): two service copies may take a device's messages in
    another order, so a chain sent as several could still leave the job stuck."""
    final = parse_job_report(payload(state="succeeded", percent=..., after=CHAIN))
    assert final.after == tuple(CHAIN)
    assert advance(JobState(heard), final).state == "succeeded"
    back = parse_job_report(
        payload(state="rolled_back", percent=..., reason="bootcount", after=CHAIN[:3])
    )
    if heard == "verifying":
        return
    assert advance(JobState(heard), back).state == "rolled_back"
    # without the steps, the same report from there is refused, as before
    bare = parse_job_report(payload(state="succeeded", percent=...))
    with pytest.raises(TransitionError, match=f"{heard} -> succeeded"):
        advance(JobState(heard), bare)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (payload(after=CHAIN), "after is for a final report, not 'downloading'"),
        (payload(state="succeeded", percent=..., after="rebooting"), "after must be a list"),
        (payload(state="succeeded", percent=..., after=["succeeded"]), "after must be a list"),
        (payload(state="succeeded", percent=..., after=["queued"]), "after must be a list"),
        (payload(state="succeeded", percent=..., after=CHAIN * 2), "after must be a list"),
        (payload(state="succeeded", percent=..., after=[1]), "after must be a list"),
    ],
)
def test_parse_rejects_a_bad_after(raw: bytes, message: str) -> None:
    with pytest.raises(JobReportError, match=message):
        parse_job_report(raw)


def test_a_nul_in_a_reason_is_kept_as_a_replacement_character() -> None:
    report = parse_job_report(payload(state="failed", percent=..., reason="disk\x00full"))
    assert report.reason == "disk\ufffdfull"
