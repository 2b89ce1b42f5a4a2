"""The shared protocol: one strict envelope parser, and every message kind round-tripping.

Property-based (hypothesis). The parser takes exactly the JSON objects with an
integer ``"v": 1`` and finite numbers, refuses everything else with a
ProtocolError (never another exception), and each message kind built by one
side is read back, field for field, by the other side's parser.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twelvefactor_agent.config import reconfig
from twelvefactor_agent.forward.queue import Message, QueueStats
from twelvefactor_agent.localapi import proxycall
from twelvefactor_agent.protocol import envelope, names, states, topics
from twelvefactor_agent.protocol.envelope import ProtocolError
from twelvefactor_agent.session import payloads
from twelvefactor_agent.update import decide as update
from twelvefactor_services.management import configlogic, jobs, jobstore, logic
from twelvefactor_services.management.artifacts import Artifact
from twelvefactor_services.solution import envelope as solution_envelope
from twelvefactor_services.solution import proxy, proxyconfig

pytestmark = pytest.mark.unit

finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | finite | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)

devices = st.from_regex(names.DEVICE_ID_RE, fullmatch=True)
streams = st.from_regex(names.STREAM_RE, fullmatch=True)
job_ids = st.from_regex(names.JOB_ID_RE, fullmatch=True)
digests = st.from_regex(names.SHA256_RE, fullmatch=True)
versions = st.from_regex(names.VERSION_RE, fullmatch=True)
timestamps = st.floats(min_value=0, max_value=4e9, allow_nan=False)
short_text = st.text(max_size=40)


# -- the envelope parser ---------------------------------------------------------


@given(objects)
def test_every_v1_object_round_trips(doc: dict[str, Any]) -> None:
    doc = {**doc, "v": 1}
    assert envelope.parse(envelope.dumps(doc)) == doc


@given(st.binary(max_size=200) | objects.map(lambda d: json.dumps(d).encode()))
def test_anything_else_is_a_protocol_error_never_a_crash(raw: bytes) -> None:
    try:
        doc = envelope.parse(raw)
    except ProtocolError:
        return
    assert type(doc) is dict and type(doc["v"]) is int and doc["v"] == 1


@given(st.sampled_from([1.0, True, "1", 2, 0, None, [1], {"v": 1}]))
def test_v_must_be_the_integer_1(v: object) -> None:
    with pytest.raises(ProtocolError, match="unsupported schema version"):
        envelope.parse(json.dumps({"v": v}).encode())


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"v":1,"ts":NaN}', "NaN is not a JSON number"),
        (b'{"v":1,"ts":Infinity}', "Infinity is not a JSON number"),
        (b'{"v":1,"ts":-Infinity}', "-Infinity is not a JSON number"),
        (b'{"v":1,"ts":1e999}', "out of range"),
        (b'{"v":1,"x":"\xff"}', "not UTF-8"),
        (b"[1]", "not a JSON object but list"),
        (b"{", "not JSON"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_refusals_say_why(raw: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        envelope.parse(raw)


def test_size_cap_comes_before_decoding() -> None:
    raw = envelope.dumps({"v": 1, "pad": "x" * 100})
    assert envelope.parse(raw, max_bytes=len(raw))["pad"] == "x" * 100
    with pytest.raises(ProtocolError, match=f"larger than {len(raw) - 1}"):
        envelope.parse(raw, max_bytes=len(raw) - 1)


def test_a_receiver_keeps_its_own_error_type() -> None:
    with pytest.raises(update.JobError):
        update.parse_job(b'{"v":1.0}')
    with pytest.raises(jobs.JobReportError):
        jobs.parse_job_report(b'{"v":true}')
    with pytest.raises(logic.PayloadError):
        logic.parse_report("dev-1", "health", b'{"v":1,"ts":1e999}')


@given(st.sampled_from([True, 1.0, "1", None, -1, 2**63]))
def test_integers_are_integers(value: object) -> None:
    with pytest.raises(ProtocolError, match="'n' is not an integer"):
        envelope.integer({"n": value}, "n", 0, 2**62)


def test_dumps_refuses_what_parse_refuses() -> None:
    with pytest.raises(ValueError):
        envelope.dumps({"v": 1, "ts": math.nan})


# -- topics ------------------------------------------------------------------------


@given(devices, st.sampled_from(["online", "meta", "health", "config", "update"]))
def test_management_topics_parse_back(device: str, leaf: str) -> None:
    up = topics.parse_up(topics.mgmt_up(device, leaf))
    assert up == topics.UpTopic(topics.MGMT, device, (leaf,))
    assert topics.parse_up(topics.mgmt_down(device, leaf)) is None


@given(devices, streams)
def test_data_topics_parse_back(device: str, stream: str) -> None:
    assert topics.parse_up(topics.data(device, stream)) == topics.UpTopic(
        topics.SOL, device, ("data", stream)
    )


# -- every message kind, built by one side and read by the other --------------------


@given(timestamps, st.sampled_from(["shutdown", "reconfigure"]))
def test_online_will_and_goodbye(ts: float, reason: str) -> None:
    assert logic.parse_report("d", "online", payloads.online(ts)) == logic.OnlineReport(
        True, None, ts
    )
    assert logic.parse_report("d", "online", payloads.will()) == logic.OnlineReport(
        False, "lost", None
    )
    assert logic.parse_report("d", "online", payloads.shutdown(ts, reason)) == logic.OnlineReport(
        False, reason, ts
    )


@given(devices, timestamps, versions, short_text, st.sampled_from(["A", "B", None]))
def test_meta(device: str, ts: float, version: str, kernel: str, slot: str | None) -> None:
    raw = payloads.meta(
        ts=ts,
        device=device,
        agent_version=version,
        os={"id": "twelvefactor", "version": version},
        kernel=kernel,
        machine="x86_64",
        hardware="qemux86-64 1.0",
        slot=slot,
        boot={"slot": slot, "bootcount": 1},
    )
    report = logic.parse_report(device, "meta", raw)
    assert isinstance(report, logic.MetaReport)
    assert report.device_ts == ts
    assert (report.body["kernel"], report.body["slot"], report.body["os"]["version"]) == (
        kernel,
        slot,
        version,
    )


@given(
    timestamps,
    st.integers(0, 2**40),
    st.integers(0, 2**30),
    st.integers(0, 2**31),
    st.none() | short_text,
)
def test_health(ts: float, depth: int, size: int, dropped: int, error: str | None) -> None:
    queue = QueueStats(depth, size, dropped, ts if depth else None)
    raw = payloads.health(
        ts=ts,
        uptime_s=ts / 2,
        load=[0.5, 0.25, 0.0],
        memory={"total_kb": 1000, "available_kb": None},
        data={"path": "/data", "free_bytes": size},
        slot="A",
        os_version="1.0",
        agent_version="0.1.0",
        queue=queue,
        last_error=error,
    )
    report = logic.parse_report("d", "health", raw)
    assert isinstance(report, logic.HealthReport)
    assert report.device_ts == ts
    assert report.body["queue"] == queue.as_json()
    assert report.body["last_error"] == error


@given(st.integers(1, 2**53), st.sampled_from(states.CONFIG_STATUSES), st.none() | short_text)
def test_config_report(version: int, status: str, error: str | None) -> None:
    raw = envelope.dumps(reconfig.Report(version, status, error).as_json())
    kept = None if error is None else error.replace("\x00", "\ufffd")  # (PostgreSQL's text)
    assert logic.parse_report("d", "config", raw) == logic.ConfigReport(version, status, kept)


config_values = st.integers(1, 65535) | st.booleans() | st.text(max_size=10) | finite


@given(
    st.integers(1, 2**53),
    st.dictionaries(
        st.sampled_from(["agent", "management", "solution"]),
        st.dictionaries(st.sampled_from(["port", "keepalive", "host"]), config_values, max_size=3),
        max_size=3,
    ),
)
def test_desired_configuration(version: int, config: dict[str, Any]) -> None:
    raw = configlogic.desired_document(version, config)
    assert reconfig.parse_desired(raw) == reconfig.Version(version, config)


@given(
    job_ids,
    devices,
    versions,
    digests,
    st.integers(1, update.MAX_SIZE),
    st.none() | st.tuples(digests, st.integers(1, update.MAX_SIZE), digests),
)
def test_update_job(
    job: str, device: str, version: str, sha: str, size: int, delta: tuple[str, int, str] | None
) -> None:
    stored = None if delta is None else dict(zip(("sha256", "size", "zck"), delta, strict=True))
    artifact = Artifact(sha, version, {"qemux86-64": ["1.0", "1.1"]}, size, 0.0, stored)
    raw = jobstore.job_document(job, device, artifact, "https://10.0.0.1:8443/")
    assert update.parse_job(raw) == update.UpdateJob(
        job,
        device,
        version,
        {"qemux86-64": ("1.0", "1.1")},
        sha,
        size,
        f"https://10.0.0.1:8443/artifacts/{sha}.swu",
        delta=None
        if delta is None
        else update.Delta(delta[0], delta[1], f"https://10.0.0.1:8443/artifacts/{delta[0]}.swu"),
    )


@given(
    job_ids,
    st.sampled_from(sorted(states.REPORTABLE)),
    timestamps,
    st.integers(0, 100),
    st.text(min_size=1, max_size=jobs.MAX_REASON),
    st.none() | st.sampled_from(["delta", "full"]),
    st.none() | st.text(min_size=1, max_size=jobs.MAX_REASON),
)
def test_job_report(
    job: str,
    state: str,
    ts: float,
    percent: int,
    reason: str,
    path: str | None,
    fallback: str | None,
) -> None:
    with_percent = state in states.WITH_PERCENT
    raw = update.report_payload(
        job,
        state,
        ts=ts,
        percent=percent if with_percent else None,
        reason=reason if state == states.FAILED else None,
        path=path,
        fallback=fallback,
    )
    assert jobs.parse_job_report(raw) == jobs.JobReport(
        job,
        state,
        percent if with_percent else None,
        # free text keeps the report, a NUL made U+FFFD (PostgreSQL's text cannot hold one)
        envelope.without_nul(reason) if state == states.FAILED else None,
        ts,
        path,
        None if fallback is None else envelope.without_nul(fallback),
    )


@given(
    devices,
    st.from_regex(names.QUEUE_ID_RE, fullmatch=True),
    streams,
    st.integers(0, 2**63 - 1),
    timestamps,
    st.binary(max_size=300),
)
def test_data_envelope(
    device: str, queue_id: str, stream: str, seq: int, ts: float, data: bytes
) -> None:
    raw = payloads.data_envelope(device, queue_id, Message(seq, stream, ts, data))
    got = solution_envelope.parse_envelope(device, ("data", stream), raw)
    assert (got.device, got.queue_id, got.seq, got.stream, got.ts) == (
        device,
        queue_id,
        seq,
        stream,
        ts,
    )
    assert base64.b64decode(got.body["payload"]) == data


PROXY = proxyconfig.parse(
    {
        "services": {
            "weather": {
                "url": "https://api.example.com/v2",
                "devices": ["dev-1"],
                "methods": ["GET", "POST"],
            }
        }
    }
)


@given(
    st.sampled_from(["GET", "POST"]),
    st.from_regex(r"/[a-z0-9]{1,10}(/[a-z0-9]{1,10}){0,3}", fullmatch=True),
    st.binary(max_size=200),
    st.floats(min_value=0.5, max_value=10),
)
def test_proxy_request(method: str, path: str, body: bytes, timeout: float) -> None:
    call = proxycall.Call("weather", method, path, {}, {}, body, timeout)
    plan = proxy.plan(
        PROXY, "dev-1", call.request_payload(), proxy.response_topic("dev-1"), b"c1", None
    )
    assert isinstance(plan, proxy.Plan)
    assert (plan.method, plan.target, plan.body, plan.timeout) == (
        method,
        "/v2" + path,
        body,
        min(timeout, PROXY.services["weather"].timeout),
    )


@given(st.integers(100, 599), st.binary(max_size=200), st.sampled_from(proxycall.ERRORS))
@settings(max_examples=50)
def test_proxy_answers(status: int, body: bytes, error: str) -> None:
    ok = proxycall.parse_answer(proxy.answer_ok(status, [("Content-Type", "text/plain")], body))
    assert ok == {
        "ok": True,
        "status": status,
        "headers": {"content-type": "text/plain"},
        "body": base64.b64encode(body).decode(),
    }
    failed = proxycall.parse_answer(proxy.answer_error(error, "why", status))
    assert failed == {"ok": False, "error": error, "message": "why", "status": status}
