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
from typing import Any

from twelvefactor_agent.protocol import envelope
from twelvefactor_agent.protocol.envelope import ProtocolError
from twelvefactor_agent.protocol.names import JOB_ID_RE
from twelvefactor_agent.protocol.states import (
    DOWNLOADED,
    DOWNLOADING,
    FAILED,
    FINAL,
    INSTALLING,
    QUEUED,
    REBOOTING,
    REPORTABLE,
    TRANSITIONS,
    VERIFYING,
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
    after: tuple[str, ...] = ()  # a final report: the steps that lead to it, in order


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
    return JobReport(job, state, percent, reason, ts, path, fallback, _after(doc, state))


def _after(doc: dict[str, Any], state: str) -> tuple[str, ...]:
    """A final report's `after`: the steps before it, so that one message ends the job
    from wherever the service stands (messages of one device may reach two service
    copies and be taken in another order; docs/protocol.md, "Updates")."""
    after = doc.get("after", [])
    if after == []:
        return ()
    if state not in FINAL:
        raise JobReportError(f"after is for a final report, not {state!r}")
    steps = sorted(PATH[1:])
    if (
        not isinstance(after, list)
        or len(after) > len(PATH)
        or not all(isinstance(s, str) and s in PATH[1:] for s in after)
    ):
        raise JobReportError(f"after must be a list of at most {len(PATH)} of {steps}")
    return tuple(after)


# The way a job goes forward; a report of a step before the job's state is the head of a
# final report's chain (docs/protocol.md, "Updates"), ignored without a warning.
PATH = (QUEUED, DOWNLOADING, DOWNLOADED, INSTALLING, REBOOTING, VERIFYING)


def replayed(current: str, reported: str) -> bool:
    """True when `reported` is a step the job in `current` has already passed (or its
    final state again)."""
    if current in FINAL:
        return reported == current or reported in PATH  # a device answering a job again
    return reported in PATH and current in PATH and PATH.index(reported) <= PATH.index(current)


def advance(current: JobState, report: JobReport) -> JobState:
    """The job's state after `report`, or TransitionError if the report is not legal now.

    A final report's `after` steps are taken first, each where it is legal (a step the
    job has passed is skipped): the download and the install count as done."""
    state = current
    for step in report.after:
        if step in TRANSITIONS[state.state]:
            state = JobState(step, 100 if step in WITH_PERCENT else None, None, report.ts)
    if report.state not in TRANSITIONS[state.state]:
        raise TransitionError(f"{state.state} -> {report.state} is not a legal transition")
    return JobState(report.state, report.percent, report.reason, report.ts)
