"""Where an update job stands, and what comes next when the agent starts: pure logic.

The agent keeps the job it is working on in a record on /data (written
before each step starts, so a power cut or a kill leaves the step to redo):

    downloading -> installing -> rebooting -> (new boot) verifying -> succeeded
         \\             /                    \\-> (back on the old slot) rolled_back
          downloaded --   (a held job: downloaded, checked, waiting for the go)

On start, `resume` reads the record together with the slot the device runs
from, this boot's id and the boot environment, and says what to do:
continue the download (the partial file is on /data), install again (a power
cut stopped SWUpdate: the idle slot is half written but the boot environment
still selects the old slot), request the reboot again (the agent restarted
before the device rebooted), verify the new slot, or report that the device
came back on the old slot (the bootloader fell back).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from twelvefactor_agent.protocol.states import (
    DOWNLOADED,
    DOWNLOADING,
    FINAL,
    INSTALLING,
    REBOOTING,
)

MAX_INSTALLS = 5  # install attempts (each power cut during SWUpdate is one) before giving up
INTERRUPTED = "install_interrupted"
HANDLED_KEPT = 32  # finished job ids remembered, so a retained job is not run twice

STATES = (DOWNLOADING, DOWNLOADED, INSTALLING, REBOOTING)


class RecordError(ValueError):
    pass


class Record(NamedTuple):
    job: str
    version: str
    sha256: str
    size: int
    url: str
    state: str
    from_slot: str  # the slot the job started on
    target_slot: str | None = None  # the slot SWUpdate wrote (known once installed)
    boot_id: str | None = None  # the boot on which the reboot was requested
    installs: int = 0  # install attempts started
    # Set when the job is over: its final state and reason, kept until the
    # management service has acknowledged the final report.
    final: str | None = None
    reason: str | None = None
    hold: bool = False  # a download-only job not released yet: stop once downloaded
    # On a delta (issue 14), sha256/size/url are the delta .swu's and `full` the
    # full .swu's, taken if anything about the delta fails; `fallback` says what.
    full: tuple[str, int, str] | None = None
    fallback: str | None = None

    @property
    def path(self) -> str:
        """The artifact in hand: "delta" or "full"."""
        return "full" if self.full is None else "delta"

    def finished(self, state: str, reason: str | None) -> Record:
        return self._replace(final=state, reason=reason)

    def to_json(self) -> bytes:
        return json.dumps({"v": 1, **self._asdict()}, indent=1).encode()


def parse_record(raw: bytes) -> Record:
    """The record as stored; RecordError if it is not one (the caller drops it)."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.pop("v", None) != 1:
        raise RecordError("not a version 1 record")
    full = doc.get("full")
    if full is not None:
        ok = isinstance(full, list) and len(full) == 3
        if not ok or [type(v) for v in full] != [str, int, str]:
            raise RecordError("full is not [sha256, size, url]")
        doc["full"] = tuple(full)
    try:
        record = Record(**doc)
    except TypeError as exc:
        raise RecordError(str(exc)) from None
    types: dict[str, Any] = {
        "job": str,
        "version": str,
        "sha256": str,
        "size": int,
        "url": str,
        "state": str,
        "from_slot": str,
        "installs": int,
        "hold": bool,
    }
    for key, kind in types.items():
        if not isinstance(getattr(record, key), kind):
            raise RecordError(f"{key} has the wrong type")
    if record.fallback is not None and not isinstance(record.fallback, str):
        raise RecordError("fallback has the wrong type")
    if record.state not in STATES:
        raise RecordError(f"unknown state {record.state!r}")
    if record.final not in (None, *FINAL):
        raise RecordError(f"unknown final state {record.final!r}")
    return record


class Download(NamedTuple):
    """Continue (or start) the download."""


class Hold(NamedTuple):
    """The file is downloaded and checked: report `downloaded` and wait for the go."""


class Install(NamedTuple):
    """Hand the downloaded file to SWUpdate (again)."""


class Reboot(NamedTuple):
    """The new slot is installed and selected: report `rebooting`, then reboot."""

    target_slot: str


class Verify(NamedTuple):
    """Running the new slot: report `verifying`, then `succeeded` once it is confirmed."""


class Finish(NamedTuple):
    """The job ends with `state` (failed or rolled_back) and `reason`."""

    state: str
    reason: str


Step = Download | Hold | Install | Reboot | Verify | Finish


def final_chain(state: str) -> tuple[str, ...]:
    """The steps that lead to final `state` from wherever the service last heard, the
    final state last (sent as one report: its `after` and its state).

    The service takes each step where it is legal and skips the rest (a step the
    job has passed), so a final report lands even if earlier ones were lost: while
    offline, or in flight to a service copy that died. It starts at `downloading`
    (legal from `queued` on): a service that missed the first report must not be
    left with a job it can never end.
    """
    if state == "succeeded":
        return (DOWNLOADING, INSTALLING, REBOOTING, "verifying", "succeeded")
    if state == "rolled_back":
        return (DOWNLOADING, INSTALLING, REBOOTING, "rolled_back")
    return (state,)


def other(slot: str) -> str:
    return "B" if slot == "A" else "A"


def installed_slot(env: Mapping[str, str], running: str) -> str | None:
    """The slot SWUpdate installed and selected, if its transaction is complete.

    SWUpdate writes the boot environment last (slot, upgrade_available=1,
    bootcount=0) and marks its transaction in progress while it writes.
    """
    slot = env.get("slot")
    if (
        slot in ("A", "B")
        and slot != running
        and env.get("upgrade_available") == "1"
        and env.get("recovery_status") != "in_progress"
    ):
        return slot
    return None


def resume(
    record: Record, *, running_slot: str | None, boot_id: str, env: Mapping[str, str] | None
) -> Step:
    """What to do with `record` now (the agent just started)."""
    if record.final is not None:  # over; its final report was not acknowledged yet
        return Finish(record.final, record.reason or "")
    if running_slot is None:
        return Finish("failed", "cannot tell which slot the device runs from")
    if env is None:
        return Finish("failed", "cannot read the boot environment")
    if record.state == DOWNLOADING:
        return Download()
    if record.state == DOWNLOADED:
        return Hold() if record.hold else Install()  # released, not installing yet
    if record.state == INSTALLING:
        target = installed_slot(env, running_slot)
        if target is not None:  # SWUpdate finished before the agent could note it
            return Reboot(target)
        if record.installs >= MAX_INSTALLS:
            return Finish("failed", f"{INTERRUPTED}: {record.installs} attempts did not finish")
        return Install()
    # rebooting
    target = record.target_slot or other(record.from_slot)
    if running_slot == target:
        return Verify()
    if record.boot_id == boot_id:
        if installed_slot(env, running_slot) == target:
            return Reboot(target)  # the agent restarted before the device rebooted
        return Finish("failed", f"boot_environment: slot {target} is no longer selected")
    return Finish("rolled_back", rollback_reason(env, target, running_slot))


def rollback_reason(env: Mapping[str, str], target: str, running: str) -> str:
    tries = env.get("bootlimit", "3")
    if env.get("rollback") == target:
        why = f"slot {target} did not confirm itself in {tries} boots and the bootloader fell back"
    else:
        why = f"the device came back on slot {running} instead of {target}"
    return f"rolled_back: {why}; running slot {running}"


def confirmed(env: Mapping[str, str] | None, running_slot: str) -> bool:
    """The new slot confirmed itself (twelvefactor-confirm cleared upgrade_available)."""
    if env is None:
        return False
    return env.get("slot") == running_slot and env.get("upgrade_available") == "0"


def remember(handled: list[str], job: str) -> list[str]:
    """The handled ids with `job` added, oldest dropped past HANDLED_KEPT."""
    kept = [j for j in handled if j != job] + [job]
    return kept[-HANDLED_KEPT:]
