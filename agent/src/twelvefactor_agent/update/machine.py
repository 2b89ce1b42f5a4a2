"""The life of one update job as a state machine: events in, actions out, no I/O, no clock.

Every decision about a job is made here; `update/worker.py` only carries out
the actions (reads the device's facts, downloads, runs SWUpdate, writes
files, publishes reports, requests the reboot) and feeds each outcome back
as an event. The decisions: whether to take a job (`decide.decide`), that a
job already handled is not taken twice, which download errors are retried
(a dropped link always; others and checksum mismatches up to a limit) and
after which backoff, the dry run before the install, the reboot requested
again until it comes, which progress reports are worth sending
(`ProgressGate`), and when a job is over. Kept apart from the thread and its
sockets, each decision is unit-tested by feeding events
(tests/unit/test_agent_update_machine.py), power cuts included.

A batch of actions is carried out in order. Only its last action may be
*long* (`LONG`: it takes time and its outcome comes back as an event); the
others are quick. The job's record is saved (`SaveRecord`) before the action
it describes, so a power cut at any point leaves a record that `start`
(through `steps.resume`) carries on from:

    received -> Examine -> examined -> refused: Remember, Report(failed)
                                    -> SaveRecord(downloading), Survey -> surveyed -> (resume)
    download:  Measure -> measured -> Fetch -> fetched
                                            -> fetch_interrupted | fetch_failed | checksum_mismatch
                                               -> Wait(backoff) -> waited -> Fetch
    hold:      (a download-only job, once fetched) SaveRecord(downloaded), Measure -> measured
                                 -> Report(downloaded) ... received(same job, "now") -> install
                                                       ... received(same job, "cancel") -> finish
    install:   SaveRecord(installing), Measure -> measured -> DryRun -> dry_run_passed
                                 -> WriteSlot -> slot_written -> Survey -> surveyed
    reboot:    SaveRecord(rebooting), DeleteArtifact, ReportRebooting -> rebooting_reported
                                 -> RequestReboot -> Wait -> waited -> RequestReboot ...
    verify:    Survey -> surveyed -> (not yet confirmed) Wait -> waited -> Survey
    finish:    SaveRecord(final), DeleteArtifact, ReportFinal
                                 ... final_acked -> Remember, DeleteRecord

Time enters only as relative delays (`Wait`); report timestamps are the
worker's. The backoff's random source is injected.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import NamedTuple

from twelvefactor_agent.protocol import envelope, names
from twelvefactor_agent.protocol.states import (
    DOWNLOADED,
    DOWNLOADING,
    FAILED,
    INSTALL_CANCEL,
    INSTALL_HOLD,
    INSTALL_NOW,
    INSTALLING,
    REBOOTING,
    SUCCEEDED,
    VERIFYING,
)
from twelvefactor_agent.update import steps
from twelvefactor_agent.update.decide import (
    DEFAULT_POLICY,
    INVALID_JOB,
    JobError,
    Policy,
    ProgressGate,
    UpdateJob,
    decide,
    parse_job,
)
from twelvefactor_agent.update.steps import Record
from twelvefactor_agent.util.backoff import Backoff, Uniform

MAX_DOWNLOAD_ERRORS = 5  # consecutive download errors that are not a dropped link
MAX_CHECKSUM_ERRORS = 2
DOWNLOAD_BACKOFF = (2.0, 2.0, 60.0)  # initial, multiplier, cap (seconds)
ACK_WAIT = 30.0  # how long the `rebooting` report may take to be acknowledged
REBOOT_RETRY = 120.0  # request again a reboot that has not come
VERIFY_POLL = 2.0  # look again for the new slot's confirmation
# An unreadable boot environment at start (a power cut while it was written) is
# rewritten by the boot's confirmation (`twelvefactor-bootenv confirm`) once the
# device is healthy: look again this often, this many times, before giving up.
ENV_RETRY = 10.0
ENV_TRIES = 30
MAX_REASON = 512  # the protocol's bound on a report's reason
CANCELLED = "cancelled: the job was cancelled before its install"
INTERRUPTED = steps.INTERRUPTED


class Facts(NamedTuple):
    """What `decide` needs to know about the device, read for one job."""

    hwrevision: str | None
    os_version: str | None
    free_bytes: int  # on /data
    partial_bytes: int  # of this job's artifact already on /data
    running_slot: str | None


# -- actions: quick ------------------------------------------------------------------------


class Log(NamedTuple):
    level: int
    text: str


class SaveRecord(NamedTuple):
    """Write the job's record (atomically) before what follows it."""

    record: Record


class DeleteRecord(NamedTuple):
    """The job is over and its final report acknowledged."""


class Remember(NamedTuple):
    """Write the ids of the jobs handled (so a retained job is not taken twice), and how
    each ended (its final report is sent again when the service offers the job again)."""

    jobs: tuple[str, ...]
    outcomes: tuple[tuple[str, str, str | None], ...] = ()


class DeleteArtifact(NamedTuple):
    sha256: str


class Report(NamedTuple):
    """Publish a report on `up/update` (dropped if offline: `session_up` repeats it)."""

    job: str
    state: str
    percent: int | None = None
    reason: str | None = None


class ReportFinal(NamedTuple):
    """Publish the final state (`chain`'s last, with `reason`) as one report whose `after`
    lists the steps leading to it; if it went out, call `final_acked` once the broker
    acknowledges it."""

    job: str
    chain: tuple[str, ...]
    reason: str | None


# -- actions: long (the outcome comes back as an event) -------------------------------------


class Examine(NamedTuple):
    """Read the device's `Facts` for `job`; then `examined`."""

    job: UpdateJob


class Survey(NamedTuple):
    """Read the running slot, this boot's id and the boot environment; then `surveyed`."""


class Measure(NamedTuple):
    """The size of the artifact on /data, None if absent; then `measured`."""

    sha256: str


class Fetch(NamedTuple):
    """One download attempt, continuing the partial file; progress as `fetch_progress`,
    then `fetched`, `fetch_interrupted`, `fetch_failed` or `checksum_mismatch`."""

    url: str
    sha256: str
    size: int


class DryRun(NamedTuple):
    """SWUpdate checks the file, writing nothing; `install_progress`, then
    `dry_run_passed` or `dry_run_refused`."""

    sha256: str


class WriteSlot(NamedTuple):
    """SWUpdate installs the file into the idle slot; `install_progress`, then
    `slot_written` or `install_failed`."""

    sha256: str


class ReportRebooting(NamedTuple):
    """Publish `rebooting` and wait up to `wait` s for its acknowledgement (the reboot
    would lose it); then `rebooting_reported`."""

    job: str
    wait: float


class RequestReboot(NamedTuple):
    """Ask twelvefactor-reboot for the reboot; then `reboot_requested` or
    `reboot_request_failed`."""

    job: str


class Wait(NamedTuple):
    """Sleep `seconds` (the stop ends it); then `waited`."""

    seconds: float


QuickAction = Log | SaveRecord | DeleteRecord | Remember | DeleteArtifact | Report | ReportFinal
LongAction = (
    Examine | Survey | Measure | Fetch | DryRun | WriteSlot | ReportRebooting | RequestReboot | Wait
)
Action = QuickAction | LongAction
LONG = (Examine, Survey, Measure, Fetch, DryRun, WriteSlot, ReportRebooting, RequestReboot, Wait)


class Phase(enum.Enum):
    """What the machine waits for."""

    IDLE = "idle"  # no job: a new one may come
    EXAMINING = "examining"  # Examine
    RESUMING = "resuming"  # Survey, then steps.resume
    RESUME_PAUSE = "resume_pause"  # Wait: the boot environment was unreadable
    MEASURING_DOWNLOAD = "measuring_download"
    DOWNLOADING = "downloading"  # Fetch
    DOWNLOAD_PAUSE = "download_pause"  # Wait before the next Fetch
    MEASURING_HOLD = "measuring_hold"  # Measure: is the held file still there?
    HELD = "held"  # downloaded; nothing in flight until the same job comes with "now"
    MEASURING_INSTALL = "measuring_install"
    DRY_RUN = "dry_run"
    WRITING_SLOT = "writing_slot"
    INSTALLED = "installed"  # Survey: which slot SWUpdate selected
    REPORTING_REBOOT = "reporting_reboot"  # ReportRebooting
    REQUESTING_REBOOT = "requesting_reboot"  # RequestReboot
    REBOOT_PAUSE = "reboot_pause"  # Wait before requesting again
    VERIFYING = "verifying"  # Survey: confirmed yet?
    VERIFY_PAUSE = "verify_pause"
    FINAL = "final"  # the final report waits for its acknowledgement


class UpdateMachine:
    def __init__(
        self,
        *,
        device: str,
        uniform: Uniform,
        handled: list[str] | None = None,
        outcomes: dict[str, tuple[str, str | None]] | None = None,
        policy: Policy = DEFAULT_POLICY,
    ) -> None:
        self.device = device
        self.policy = policy
        self.handled = list(handled or [])
        # job -> (final state, reason), for the handled jobs whose end is known
        self.outcomes = {j: o for j, o in (outcomes or {}).items() if j in self.handled}
        self.record: Record | None = None
        self.phase = Phase.IDLE
        self._uniform = uniform
        self._gate = ProgressGate()
        self._last: tuple[str, int | None] | None = None  # the last report, for reconnects
        self._offered: UpdateJob | None = None  # under Examine
        self._boot_id = ""  # from the last Survey
        self._slot = ""  # the running slot the new one is verified on
        self._retry = Backoff(*DOWNLOAD_BACKOFF, uniform)
        self._errors = 0
        self._checksum_errors = 0
        self._env_tries = 0  # looks at an unreadable boot environment while resuming

    # -- events ------------------------------------------------------------------------

    def start(self, record: Record | None) -> list[Action]:
        """The worker starts, with the record a previous run left (None: no job)."""
        self.record = record
        if record is None:
            return []
        self.phase = Phase.RESUMING
        return [Log(logging.INFO, f"update job {record.job}: resuming ({record.state})"), Survey()]

    def received(self, payload: bytes) -> list[Action]:
        """A message on `down/update` (retained copies included; empty: cleared)."""
        if not payload:
            return []
        try:
            job = parse_job(payload)
        except JobError as exc:
            job_id = _job_id(payload)
            note = Log(logging.WARNING, f"update job {job_id or '(no id)'} refused: {exc}")
            if job_id is None or job_id in self.handled:
                return [note]
            return [note, *self._refuse(job_id, f"{INVALID_JOB}: {exc}")]
        if job.job in self.handled:
            return self._again(job.job)
        busy = self.record.job if self.record is not None else None
        if busy is None and self.phase is Phase.EXAMINING and self._offered is not None:
            busy = self._offered.job
        if busy is not None:
            if busy == job.job:
                return self._install_mode(job.install)
            return [Log(logging.WARNING, f"update job {job.job} ignored: busy with {busy}")]
        if job.install == INSTALL_CANCEL:
            note = Log(logging.INFO, f"update job {job.job} cancelled before it started")
            return [note, *self._refuse(job.job, CANCELLED)]
        self.phase = Phase.EXAMINING
        self._offered = job
        return [Examine(job)]

    def examined(self, facts: Facts) -> list[Action]:
        job = self._offered
        if self.phase is not Phase.EXAMINING or job is None:
            return []
        self._offered = None
        self.phase = Phase.IDLE
        refusal = decide(
            job,
            device=self.device,
            hwrevision=facts.hwrevision,
            os_version=facts.os_version,
            free_bytes=facts.free_bytes,
            partial_bytes=facts.partial_bytes,
            policy=self.policy,
        )
        if refusal is not None:
            note = f"update job {job.job} refused: {refusal.reason}: {refusal.detail}"
            return [
                Log(logging.WARNING, note),
                *self._refuse(job.job, f"{refusal.reason}: {refusal.detail}"),
            ]
        if facts.running_slot is None:
            return self._refuse(job.job, "no_slot: cannot tell which slot is running")
        self.phase = Phase.RESUMING
        full = (job.sha256, job.size, job.url)
        record = Record(
            job.job,
            job.version,
            *(job.delta or full),
            DOWNLOADING,
            facts.running_slot,
            hold=job.install == INSTALL_HOLD,
            full=full if job.delta else None,
        )
        what = f"{job.size} bytes" + (f", by delta ({job.delta.size})" if job.delta else "")
        return [
            Log(logging.INFO, f"update job {job.job}: version {job.version}, {what}"),
            *self._save(record),
            Survey(),
        ]

    def surveyed(
        self, *, running_slot: str | None, boot_id: str, env: Mapping[str, str] | None
    ) -> list[Action]:
        record = self.record
        if record is None:
            return []
        self._boot_id = boot_id
        if self.phase is Phase.RESUMING:
            if env is None and record.final is None and self._env_tries < ENV_TRIES:
                self._env_tries += 1
                self.phase = Phase.RESUME_PAUSE
                note = f"update job {record.job}: the boot environment is unreadable; looking again"
                return [Log(logging.WARNING, note), Wait(ENV_RETRY)]
            step = steps.resume(record, running_slot=running_slot, boot_id=boot_id, env=env)
            return self._carry_on(step, running_slot)
        if self.phase is Phase.INSTALLED:
            running = running_slot or record.from_slot
            target = steps.installed_slot(env or {}, running)
            if target is None:
                reason = "boot_environment: SWUpdate succeeded but selected no new slot"
                return self._carry_on(steps.Finish(FAILED, reason), running_slot)
            return self._carry_on(steps.Reboot(target), running_slot)
        if self.phase is Phase.VERIFYING:
            if steps.confirmed(env, self._slot):
                return self._carry_on(steps.Finish(SUCCEEDED, ""), running_slot)
            self.phase = Phase.VERIFY_PAUSE
            return [Wait(VERIFY_POLL)]
        return []

    def measured(self, size: int | None) -> list[Action]:
        """The artifact's size on /data (None: no file)."""
        record = self.record
        if record is None:
            return []
        if self.phase is Phase.MEASURING_DOWNLOAD:
            self.phase = Phase.DOWNLOADING
            shown = self._gate.percent(size or 0, record.size)
            return [*self._progress(DOWNLOADING, shown), self._fetch(record)]
        if self.phase is Phase.MEASURING_HOLD:
            if size is None:  # the file went while held: fetch it again
                saved = self._save(record._replace(state=DOWNLOADING))
                return [*saved, *self._carry_on(steps.Download())]
            if not record.hold:  # released meanwhile
                return self._carry_on(steps.Install())
            self.phase = Phase.HELD
            note = f"update job {record.job}: downloaded; the install waits for the go"
            return [Log(logging.INFO, note), *self._progress(DOWNLOADED, None)]
        if self.phase is Phase.MEASURING_INSTALL:
            if size is None:  # the file went (a full /data cleaned up?): fetch it again
                saved = self._save(record._replace(state=DOWNLOADING))
                return [*saved, *self._carry_on(steps.Download())]
            self.phase = Phase.DRY_RUN
            # every check, nothing written: a bad file never touches the idle slot
            return [*self._progress(INSTALLING, 0), DryRun(record.sha256)]
        return []

    def fetch_progress(self, done: int, total: int) -> list[Action]:
        if self.phase is not Phase.DOWNLOADING:
            return []
        return self._progress(DOWNLOADING, self._gate.percent(done, total))

    def fetched(self) -> list[Action]:
        """The artifact is complete and its sha256 checked."""
        if self.phase is not Phase.DOWNLOADING or self.record is None:
            return []
        return self._carry_on(steps.Hold() if self.record.hold else steps.Install(), None)

    def fetch_interrupted(self, error: str) -> list[Action]:
        """The link dropped (or timed out): always worth another try, from where it stopped."""
        if self.phase is not Phase.DOWNLOADING or self.record is None:
            return []
        self._errors = 0
        note = f"update job {self.record.job}: download interrupted ({error}); will resume"
        return [Log(logging.INFO, note), self._pause()]

    def fetch_failed(self, error: str) -> list[Action]:
        """An error that retrying as is will not cure (HTTP 403/404, the server's certificate)."""
        if self.phase is not Phase.DOWNLOADING or self.record is None:
            return []
        self._errors += 1
        note = Log(logging.WARNING, f"update job {self.record.job}: download failed: {error}")
        if self._errors >= MAX_DOWNLOAD_ERRORS:
            return [note, *self._fail(f"download_failed: {error}")]
        return [note, self._pause()]

    def checksum_mismatch(self, error: str) -> list[Action]:
        """The whole file has another sha256 (the worker's download deleted it)."""
        if self.phase is not Phase.DOWNLOADING or self.record is None:
            return []
        self._checksum_errors += 1
        note = Log(logging.WARNING, f"update job {self.record.job}: {error}")
        if self._checksum_errors >= MAX_CHECKSUM_ERRORS:
            return [note, *self._fail(f"checksum_mismatch: {error}")]
        return [note, self._pause()]

    def install_progress(self, done: int, total: int) -> list[Action]:
        """Bytes SWUpdate took: the dry run is 0-49 %, the install 50-99 %."""
        if self.phase is Phase.DRY_RUN:
            base = 0
        elif self.phase is Phase.WRITING_SLOT:
            base = 50
        else:
            return []
        return self._progress(INSTALLING, base + self._gate.percent(done, total) // 2)

    def dry_run_passed(self) -> list[Action]:
        if self.phase is not Phase.DRY_RUN or self.record is None:
            return []
        self.phase = Phase.WRITING_SLOT
        return [WriteSlot(self.record.sha256)]

    def dry_run_refused(self, error: str) -> list[Action]:
        """SWUpdate refused the file without writing: the file is bad, drop it."""
        if self.phase is not Phase.DRY_RUN or self.record is None:
            return []
        return [DeleteArtifact(self.record.sha256), *self._fail(f"swupdate_refused: {error}")]

    def slot_written(self) -> list[Action]:
        """SWUpdate installed the idle slot: see which one it selected."""
        if self.phase is not Phase.WRITING_SLOT:
            return []
        self.phase = Phase.INSTALLED
        return [Survey()]

    def install_failed(self, error: str) -> list[Action]:
        if self.phase is not Phase.WRITING_SLOT:
            return []
        return self._fail(f"install_failed: {error}")

    def rebooting_reported(self) -> list[Action]:
        """`rebooting` was acknowledged, or not in time: request the reboot."""
        if self.phase is not Phase.REPORTING_REBOOT:
            return []
        return self._request_reboot()

    def reboot_requested(self) -> list[Action]:
        """The request is written; if the reboot does not come, request it again."""
        if self.phase is not Phase.REQUESTING_REBOOT:
            return []
        self.phase = Phase.REBOOT_PAUSE
        return [Wait(REBOOT_RETRY)]

    def reboot_request_failed(self, error: str) -> list[Action]:
        if self.phase is not Phase.REQUESTING_REBOOT:
            return []
        self.phase = Phase.REBOOT_PAUSE
        return [Log(logging.ERROR, error), Wait(REBOOT_RETRY)]

    def waited(self) -> list[Action]:
        record = self.record
        if record is None:
            return []
        if self.phase is Phase.DOWNLOAD_PAUSE:
            self.phase = Phase.DOWNLOADING
            return [self._fetch(record)]
        if self.phase is Phase.REBOOT_PAUSE:
            return self._request_reboot()
        if self.phase is Phase.VERIFY_PAUSE:
            self.phase = Phase.VERIFYING
            return [Survey()]
        if self.phase is Phase.RESUME_PAUSE:
            self.phase = Phase.RESUMING
            return [Survey()]
        return []

    def session_up(self) -> list[Action]:
        """The management session (re)connected: repeat where the job stands."""
        record = self.record
        if record is None:
            return []
        if record.final is not None:
            return [self._final_report(record)]
        if self._last is not None:
            return [Report(record.job, *self._last)]
        return []

    def final_acked(self, job: str) -> list[Action]:
        """The broker acknowledged the final report: forget the job for good."""
        record = self.record
        if record is None or record.job != job or record.final is None:
            return []
        self.record = None
        self._last = None
        self.phase = Phase.IDLE
        return [
            *self._remember(job, record.final, _final_reason(record)),
            DeleteRecord(),
            Log(logging.INFO, f"update job {job}: final report acknowledged"),
        ]

    def _fail(self, reason: str) -> list[Action]:
        """The artifact in hand failed: the job fails, unless it was the delta: then the
        full .swu is fetched and installed (SWUpdate's delta handler has no fallback)."""
        record = self.record
        assert record is not None
        if record.full is None:
            return self._carry_on(steps.Finish(FAILED, reason))
        sha, size, url = record.full
        self._gate = ProgressGate()  # the full download's first report goes out at once
        note = f"update job {record.job}: the delta failed ({reason}); fetching the full .swu"
        # its own install attempts: power cuts during the delta's do not count against it
        full = record._replace(
            sha256=sha, size=size, url=url, full=None, fallback=reason[:MAX_REASON], installs=0
        )
        return [
            Log(logging.WARNING, note),
            DeleteArtifact(record.sha256),
            *self._save(full._replace(state=DOWNLOADING)),
            *self._carry_on(steps.Download()),
        ]

    # -- steps.Step: where the job goes next -------------------------------------------

    def _carry_on(self, step: steps.Step, running_slot: str | None = None) -> list[Action]:
        record = self.record
        assert record is not None
        note = Log(logging.INFO, f"update job {record.job}: {type(step).__name__.lower()}")
        if (
            isinstance(step, steps.Finish)
            and step.reason.startswith(INTERRUPTED)
            and record.full is not None
            and record.final is None
        ):
            return self._fail(step.reason)  # the delta's installs never finished
        if isinstance(step, steps.Download):
            return [note, *self._download()]
        if isinstance(step, steps.Hold):
            self.phase = Phase.MEASURING_HOLD
            return [note, *self._save(record._replace(state=DOWNLOADED)), Measure(record.sha256)]
        if isinstance(step, steps.Install):
            return [note, *self._install(record)]
        if isinstance(step, steps.Reboot):
            return [note, *self._reboot(record, step.target_slot)]
        if isinstance(step, steps.Verify):
            return [note, *self._verify(record, running_slot or "")]
        return [note, *self._finish(record, step.state, step.reason)]

    def _download(self) -> list[Action]:
        assert self.record is not None
        self._retry = Backoff(*DOWNLOAD_BACKOFF, self._uniform)
        self._errors = self._checksum_errors = 0
        self.phase = Phase.MEASURING_DOWNLOAD
        return [Measure(self.record.sha256)]

    def _install(self, record: Record) -> list[Action]:
        self.phase = Phase.MEASURING_INSTALL
        saved = self._save(record._replace(state=INSTALLING, installs=record.installs + 1))
        return [*saved, Measure(record.sha256)]

    def _reboot(self, record: Record, target: str) -> list[Action]:
        record = record._replace(state=REBOOTING, target_slot=target, boot_id=self._boot_id)
        self.phase = Phase.REPORTING_REBOOT
        actions = [
            *self._save(record),
            DeleteArtifact(record.sha256),  # installed: free /data
            *self._progress(INSTALLING, 100),
        ]
        self._last = (REBOOTING, None)  # sent past the gate: it must get through
        return [*actions, ReportRebooting(record.job, ACK_WAIT)]

    def _request_reboot(self) -> list[Action]:
        record = self.record
        assert record is not None
        self.phase = Phase.REQUESTING_REBOOT
        slot = record.target_slot
        note = f"update job {record.job}: slot {slot} installed, requesting the reboot"
        return [Log(logging.INFO, note), RequestReboot(record.job)]

    def _verify(self, record: Record, running_slot: str) -> list[Action]:
        self._slot = running_slot
        self.phase = Phase.VERIFYING
        note = f"update job {record.job}: running slot {running_slot}, waiting for its confirmation"
        return [
            *self._progress(REBOOTING, None),
            *self._progress(VERIFYING, None),
            Log(logging.INFO, note),
            Survey(),
        ]

    def _finish(self, record: Record, state: str, reason: str) -> list[Action]:
        level = logging.INFO if state == SUCCEEDED else logging.WARNING
        note = Log(level, f"update job {record.job} {state}" + (f": {reason}" if reason else ""))
        actions: list[Action] = [note]
        if record.final is None:
            record = record.finished(state, reason or None)
            actions += self._save(record)
        self.phase = Phase.FINAL
        return [*actions, DeleteArtifact(record.sha256), self._final_report(record)]

    def _install_mode(self, mode: str) -> list[Action]:
        """The job in hand came again (retained, or re-sent with another `install`)."""
        record = self.record
        if record is None or record.final is not None or not record.hold or mode == INSTALL_HOLD:
            return []
        if self.phase is not Phase.HELD:  # (the worker feeds jobs between long actions only)
            if mode == INSTALL_NOW:  # still downloading: install once fetched
                return self._save(record._replace(hold=False))
            return [Log(logging.WARNING, f"update job {record.job}: cancel ignored while busy")]
        if mode == INSTALL_NOW:
            note = Log(logging.INFO, f"update job {record.job}: released for install")
            released = self._save(record._replace(hold=False))
            return [note, *released, *self._carry_on(steps.Install())]
        return [DeleteArtifact(record.sha256), *self._carry_on(steps.Finish(FAILED, CANCELLED))]

    # -- helpers -----------------------------------------------------------------------

    def _fetch(self, record: Record) -> Fetch:
        return Fetch(record.url, record.sha256, record.size)

    def _pause(self) -> Wait:
        self.phase = Phase.DOWNLOAD_PAUSE
        return Wait(self._retry.next_delay())

    def _save(self, record: Record) -> list[Action]:
        self.record = record
        return [SaveRecord(record)]

    def _progress(self, state: str, percent: int | None) -> list[Action]:
        """A report if the gate lets it through (every state change, then every 5 %)."""
        assert self.record is not None
        if not self._gate.should_report(state, 0 if percent is None else percent):
            return []
        self._last = (state, percent)
        return [Report(self.record.job, state, percent)]

    def _final_report(self, record: Record) -> ReportFinal:
        assert record.final is not None
        self._last = (record.final, None)
        return ReportFinal(record.job, steps.final_chain(record.final), _final_reason(record))

    def _refuse(self, job: str, reason: str) -> list[Action]:
        """A job refused before it started: no record, one report."""
        reason = reason[:MAX_REASON]
        return [*self._remember(job, FAILED, reason), Report(job, FAILED, reason=reason)]

    def _again(self, job: str) -> list[Action]:
        """A job offered again after it ended: its final report once more. The service
        offers a job again when it heard nothing of it for a while (a final report lost
        with a service copy, or across a broker restart), and clears the job once it has
        the final one (docs/protocol.md, "Updates")."""
        outcome = self.outcomes.get(job)
        if outcome is None:  # remembered before outcomes were kept
            return [Log(logging.INFO, f"update job {job} already handled")]
        state, reason = outcome
        note = Log(logging.INFO, f"update job {job} already handled: reporting {state} again")
        return [note, ReportFinal(job, steps.final_chain(state), reason)]

    def _remember(self, job: str, state: str, reason: str | None) -> list[Action]:
        self.handled = steps.remember(self.handled, job)
        self.outcomes[job] = (state, reason)
        self.outcomes = {j: o for j, o in self.outcomes.items() if j in self.handled}
        kept = tuple((j, *self.outcomes[j]) for j in self.handled if j in self.outcomes)
        return [Remember(tuple(self.handled), kept)]


def _final_reason(record: Record) -> str | None:
    """The reason a final report carries: none for a success."""
    return None if record.final == SUCCEEDED else (record.reason or "")[:MAX_REASON]


def _job_id(payload: bytes) -> str | None:
    """The job id of a payload too malformed to be a job, if it has a usable one."""
    try:
        doc = envelope.decode(payload)
    except envelope.ProtocolError:
        return None
    job = doc.get("job") if isinstance(doc, dict) else None
    return job if isinstance(job, str) and names.JOB_ID_RE.fullmatch(job) else None
