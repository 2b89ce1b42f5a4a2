"""Phased rollouts: the rules, without I/O (rolloutstore.py keeps them in the registry).

A rollout is an artifact, a target (a group, a list of devices, or the
enrolled devices that carry every one of some tags), phases,
a success threshold that moves it to the next phase and an error threshold
that pauses (or aborts) it, and an optional start time. Anchors: hawkBit's
rollout groups with success and error thresholds, AWS IoT Jobs' abort
criteria (percent failed after a minimum executed), Mender's phases.

A download-only rollout first sends every phase its job held: all its
devices download and check the artifact, then wait (`downloaded`). The
installs start on the go (the operator's `install`, or `install_at`): the
current phase's holds are released, and each next phase's when the success
threshold is reached, so the phases guard the installs as in any rollout. A
cancelled or aborted download-only rollout cancels the holds not released.

Phases are sizes: a count, or a percent of all the rollout's devices
(rounded up); the last phase takes every device left, so `4, 50%, 100%` over
20 devices is 4, 10 and 6. Devices are put in phases in a fixed order (the
target's, sorted) when the rollout is made.

At each step (`decide`), over the devices whose jobs have started:
- *executed* = succeeded + failed + rolled back; *failed* = failed + rolled back;
- the error threshold is reached when executed >= `error_min` and
  failed >= `error_percent` % of executed (failures an operator accepted
  by resuming do not count again): the rollout pauses, or aborts;
- the current phase's success threshold is reached when its succeeded
  devices are >= `success_min` and >= `success_percent` % of the phase: the
  next phase starts; after the last one the rollout finishes once every job
  is final.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from twelvefactor_agent.protocol.names import DEVICE_ID_RE, FLEET_GROUP_RE, SHA256_RE, TAG_RE

SCHEDULED, RUNNING, PAUSED = "scheduled", "running", "paused"
FINISHED, ABORTED, CANCELLED = "finished", "aborted", "cancelled"
STATES = (SCHEDULED, RUNNING, PAUSED, FINISHED, ABORTED, CANCELLED)
ENDED = frozenset({FINISHED, ABORTED, CANCELLED})
MAX_PHASES = 20
MAX_DEVICES = 100_000


class RolloutError(ValueError):
    """A rollout request that is not valid; ``problems`` lists what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Phase:
    count: int | None = None
    percent: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count} if self.count is not None else {"percent": self.percent}


@dataclass(frozen=True)
class Spec:
    artifact: str
    group: str | None
    devices: tuple[str, ...] | None
    phases: tuple[Phase, ...]
    tags: tuple[str, ...] | None = None  # devices enrolled with every one of these tags
    success_percent: float = 100.0
    success_min: int = 1
    error_percent: float = 20.0
    error_min: int = 1
    on_error: str = "pause"
    start_at: float | None = None
    download_only: bool = False
    install_at: float | None = None  # download only: the go comes by itself then


def _number(doc: dict[str, Any], key: str, low: float, high: float, problems: list[str]) -> Any:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        problems.append(f"{key} must be a number in {low:g}..{high:g}")
        return None
    return value


def parse_spec(doc: object) -> Spec:
    """A rollout request as the API takes it, or RolloutError with every problem."""
    if not isinstance(doc, dict):
        raise RolloutError(["the body must be a JSON object"])
    problems: list[str] = []
    known = {
        "artifact",
        "group",
        "devices",
        "tags",
        "phases",
        "success_percent",
        "success_min",
        "error_percent",
        "error_min",
        "on_error",
        "start_at",
        "download_only",
        "install_at",
    }
    for key in sorted(set(doc) - known):
        problems.append(f"unknown field {key!r}")
    artifact = doc.get("artifact")
    if not isinstance(artifact, str) or not SHA256_RE.fullmatch(artifact):
        problems.append("artifact must be the artifact's sha256")
    group, devices, tags = doc.get("group"), doc.get("devices"), doc.get("tags")
    if [group, devices, tags].count(None) != 2:
        problems.append("give exactly one target: group, devices or tags")
    if tags is not None and (
        not isinstance(tags, list)
        or not 0 < len(tags) <= 20
        or not all(isinstance(t, str) and TAG_RE.fullmatch(t) for t in tags)
    ):
        problems.append("tags must be a list of 1 to 20 tags")
    if group is not None and (not isinstance(group, str) or not FLEET_GROUP_RE.fullmatch(group)):
        problems.append(f"group {group!r} is not a group name")
    if devices is not None:
        ok = isinstance(devices, list) and 0 < len(devices) <= MAX_DEVICES
        if not ok or not all(isinstance(d, str) and DEVICE_ID_RE.fullmatch(d) for d in devices):
            problems.append(f"devices must be a list of 1 to {MAX_DEVICES} device ids")
        elif len(set(devices)) != len(devices):
            problems.append("devices lists a device twice")
    phases: list[Phase] = []
    raw = doc.get("phases", [{"percent": 100}])
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_PHASES:
        problems.append(f"phases must be a list of 1 to {MAX_PHASES} phases")
        raw = []
    for i, p in enumerate(raw, 1):
        count = p.get("count") if isinstance(p, dict) else None
        percent = p.get("percent") if isinstance(p, dict) else None
        if isinstance(count, int) and not isinstance(count, bool) and count > 0 and percent is None:
            phases.append(Phase(count=count))
        elif (
            isinstance(percent, int | float)
            and not isinstance(percent, bool)
            and 0 < percent <= 100
            and count is None
        ):
            phases.append(Phase(percent=float(percent)))
        else:
            problems.append(f'phase {i}: {{"count": N > 0}} or {{"percent": 0 < P <= 100}}')
    values = {
        key: _number(doc, key, low, high, problems)
        for key, low, high in (
            ("success_percent", 0, 100),
            ("success_min", 0, MAX_DEVICES),
            ("error_percent", 0, 100),
            ("error_min", 1, MAX_DEVICES),
            ("start_at", 0, 2**40),
            ("install_at", 0, 2**40),
        )
    }
    download_only = doc.get("download_only", False)
    if not isinstance(download_only, bool):
        problems.append("download_only must be true or false")
    elif values["install_at"] is not None and not download_only:
        problems.append("install_at is for a download-only rollout")
    on_error = doc.get("on_error", "pause")
    if on_error not in ("pause", "abort"):
        problems.append("on_error must be 'pause' or 'abort'")
    for key in ("success_min", "error_min"):
        if values[key] is not None and not isinstance(values[key], int):
            problems.append(f"{key} must be a whole number")
    if problems:
        raise RolloutError(problems)
    defaults = Spec("", None, None, ())
    return Spec(
        artifact=str(artifact),
        group=group,
        devices=None if devices is None else tuple(devices),
        phases=tuple(phases),
        tags=None if tags is None else tuple(sorted(set(tags))),
        success_percent=float(_or(values["success_percent"], defaults.success_percent)),
        success_min=int(_or(values["success_min"], defaults.success_min)),
        error_percent=float(_or(values["error_percent"], defaults.error_percent)),
        error_min=int(_or(values["error_min"], defaults.error_min)),
        on_error=str(on_error),
        start_at=values["start_at"],
        download_only=download_only is True,
        install_at=values["install_at"],
    )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def phase_sizes(total: int, phases: tuple[Phase, ...]) -> list[int]:
    """How many devices each phase gets; the last takes the rest; empty phases are dropped."""
    sizes: list[int] = []
    left = total
    for i, p in enumerate(phases):
        if i == len(phases) - 1:
            want = left
        elif p.count is not None:
            want = p.count
        else:
            want = math.ceil(total * (p.percent or 0) / 100)
        take = min(want, left)
        if take > 0:
            sizes.append(take)
        left -= take
    return sizes


@dataclass(frozen=True)
class Progress:
    """What the devices of the started phases have done (from their jobs)."""

    phase: int  # current phase, 0-based
    phases: int  # how many phases
    phase_size: int  # devices in the current phase
    phase_succeeded: int
    succeeded: int  # over all started phases
    failed: int  # failed or rolled back, over all started phases
    unfinished: int  # started jobs not final yet
    accepted_failed: int = 0  # failures an operator accepted by resuming
    accepted_executed: int = 0


@dataclass(frozen=True)
class Decision:
    action: str  # "start", "next", "pause", "abort", "finish" or "wait"
    reason: str = ""


WAIT = Decision("wait")


def decide(spec: Spec, state: str, progress: Progress | None, now: float) -> Decision:
    """The next move of a rollout in ``state``; ``progress`` is None before it started."""
    if state == SCHEDULED:
        if spec.start_at is None or now >= spec.start_at:
            return Decision("start")
        return WAIT
    if state != RUNNING or progress is None:
        return WAIT
    failed = progress.failed - progress.accepted_failed
    executed = progress.succeeded + progress.failed - progress.accepted_executed
    if executed >= spec.error_min and failed > 0 and failed * 100 >= spec.error_percent * executed:
        action = "pause" if spec.on_error == "pause" else "abort"
        return Decision(
            action, f"error threshold {spec.error_percent:g}% reached ({failed} of {executed})"
        )
    phase_ok = (
        progress.phase_succeeded >= spec.success_min
        and progress.phase_succeeded * 100 >= spec.success_percent * progress.phase_size
    )
    if progress.phase < progress.phases - 1:
        if phase_ok:
            return Decision(
                "next",
                f"success threshold {spec.success_percent:g}% reached in phase "
                f"{progress.phase + 1} ({progress.phase_succeeded} of {progress.phase_size})",
            )
        return WAIT
    if progress.unfinished == 0:
        return Decision(
            "finish", f"{progress.succeeded} succeeded, {progress.failed} failed or rolled back"
        )
    return WAIT
