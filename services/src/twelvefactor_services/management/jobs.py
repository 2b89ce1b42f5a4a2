"""Update job state per device: the states, the legal transitions, the report payload.

Pure logic, no I/O (the registry stores what `advance` returns). A device
reports on `mgmt/<id>/up/update`:

    {"v": 1, "job": "j-...", "state": "downloading", "percent": 42, "reason": null, "ts": T}

States and the transitions a report may make:

    queued ──> downloading ──> installing ──> rebooting ──> verifying ──> succeeded
       │            │              │              │             │
       └────────────┴──────────────┴──> failed    └─────────────┴──> rolled_back, failed

`downloading` and `installing` repeat with a percent (it may go down: a
download whose file was refused starts again). `failed` always carries a
reason. `succeeded`, `failed` and `rolled_back` are final: a late or repeated
report changes nothing. A device that refuses a job outright goes from
`queued` to `failed` with the refusal's reason code.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

STATES = (
    "queued",
    "downloading",
    "installing",
    "rebooting",
    "verifying",
    "succeeded",
    "failed",
    "rolled_back",
)
FINAL = frozenset({"succeeded", "failed", "rolled_back"})
WITH_PERCENT = frozenset({"downloading", "installing"})
REPORTABLE = frozenset(STATES) - {"queued"}

# state -> states a report may move it to (a state with a percent may repeat)
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"downloading", "failed"}),
    "downloading": frozenset({"downloading", "installing", "failed"}),
    "installing": frozenset({"installing", "rebooting", "failed"}),
    "rebooting": frozenset({"verifying", "rolled_back", "failed"}),
    "verifying": frozenset({"succeeded", "rolled_back", "failed"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "rolled_back": frozenset(),
}
JOB_ID_RE = re.compile(r"j-[a-z0-9]{1,32}")
MAX_REASON = 512


class JobReportError(ValueError):
    """A report that is not a valid update report."""


class TransitionError(ValueError):
    """A report that is valid but not legal from the job's current state."""


@dataclass(frozen=True)
class JobState:
    state: str = "queued"
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


def parse_job_report(payload: bytes) -> JobReport:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JobReportError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise JobReportError("not a JSON object")
    if doc.get("v") != 1:
        raise JobReportError(f"unsupported schema version {doc.get('v')!r}")
    job = doc.get("job")
    if not isinstance(job, str) or not JOB_ID_RE.fullmatch(job):
        raise JobReportError(f"invalid job id {job!r}")
    state = doc.get("state")
    if state not in REPORTABLE:
        raise JobReportError(f"invalid state {state!r}: expected one of {sorted(REPORTABLE)}")
    percent = doc.get("percent")
    if state in WITH_PERCENT:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise JobReportError(f"{state} needs an integer percent in 0..100, got {percent!r}")
    else:
        percent = None
    reason = doc.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise JobReportError(f"reason must be a string of at most {MAX_REASON} characters")
    if state == "failed" and not reason:
        raise JobReportError("failed needs a reason")
    ts = doc.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise JobReportError(f"invalid ts {ts!r}")
    return JobReport(job, state, percent, reason, float(ts))


def advance(current: JobState, report: JobReport) -> JobState:
    """The job's state after `report`, or TransitionError if the report is not legal now."""
    if report.state not in TRANSITIONS[current.state]:
        raise TransitionError(f"{current.state} -> {report.state} is not a legal transition")
    return JobState(report.state, report.percent, report.reason, report.ts)
