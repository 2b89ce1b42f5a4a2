"""Update job state per device: the states, the legal transitions, the report payload.

Pure logic, no I/O (the registry stores what `advance` returns). A device
reports on `mgmt/<id>/up/update`:

    {"v": 1, "job": "j-...", "state": "downloading", "percent": 42, "reason": null, "ts": T}

The states and the moves a report may make are the protocol's
(`twelvefactor_agent.protocol.states`). `downloading` and `installing` repeat
with a percent (it may go down: a download whose file was refused starts
again). `failed` always carries a reason. `succeeded`, `failed` and
`rolled_back` are final: a late or repeated report changes nothing. A device
that refuses a job outright goes from `queued` to `failed` with the refusal's
reason code.
"""

from __future__ import annotations

from dataclasses import dataclass

from twelvefactor_agent.protocol import envelope
from twelvefactor_agent.protocol.envelope import ProtocolError
from twelvefactor_agent.protocol.names import JOB_ID_RE
from twelvefactor_agent.protocol.states import (
    FAILED,
    FINAL,
    QUEUED,
    REPORTABLE,
    TRANSITIONS,
    WITH_PERCENT,
)

MAX_REASON = 512


class JobReportError(ProtocolError):
    """A report that is not a valid update report."""


# Seconds without a report before an online device's unfinished job is offered again
# (jobstore.offer_quiet_again): longer than the pause between any two reports of a
# working job (a download reports every 5 %, an install every few seconds, a reboot
# within the boot limit), short enough that a lost final report does not hold a
# rollout for long (the management service's --job-quiet-after).
JOB_QUIET_AFTER = 600.0


class TransitionError(ValueError):
    """A report that is valid but not legal from the job's current state."""


@dataclass(frozen=True)
class JobState:
    state: str = QUEUED
    percent: int | None = None
    reason: str | None = None
    updated: float | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass(frozen=True)
class JobReport:
    job: str
    state: str
    percent: int | None
    reason: str | None
    ts: float
    path: str | None = None  # the artifact the device is on: "delta" or "full"
    fallback: str | None = None  # why it gave a delta up for the full .swu


PATHS = ("delta", "full")


def parse_job_report(payload: bytes) -> JobReport:
    doc = envelope.parse(payload, error=JobReportError)
    job = envelope.text(doc, "job", pattern=JOB_ID_RE, error=JobReportError)
    state = doc.get("state")
    if state not in REPORTABLE:
        raise JobReportError(f"invalid state {state!r}: expected one of {sorted(REPORTABLE)}")
    percent: int | None = None
    if state in WITH_PERCENT:
        percent = envelope.integer(doc, "percent", 0, 100, error=JobReportError)
    reason = envelope.optional_text(doc, "reason", max_len=MAX_REASON, error=JobReportError)
    if state == FAILED and not reason:
        raise JobReportError("failed needs a reason")
    ts = envelope.number(doc, "ts", error=JobReportError)
    path = doc.get("path")
    if path is not None and path not in PATHS:
        raise JobReportError(f"invalid path {path!r}: expected one of {list(PATHS)}")
    fallback = envelope.optional_text(doc, "fallback", max_len=MAX_REASON, error=JobReportError)
    return JobReport(job, state, percent, reason, ts, path, fallback)


def advance(current: JobState, report: JobReport) -> JobState:
    """The job's state after `report`, or TransitionError if the report is not legal now."""
    if report.state not in TRANSITIONS[current.state]:
        raise TransitionError(f"{current.state} -> {report.state} is not a legal transition")
    return JobState(report.state, report.percent, report.reason, report.ts)
