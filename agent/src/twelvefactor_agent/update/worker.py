"""The update worker: the thread that carries out what the update machine decides.

`machine.UpdateMachine` (pure) decides everything about a job; this module
does its I/O and feeds each outcome back as an event. It reads the device's
facts (`/etc/hwrevision`, the OS version, free space on /data, the running
slot, this boot's id, the boot environment), downloads resumably to /data
(`download`), has SWUpdate check and then install the file (`swupdate`),
writes the job's record (`steps.Record`) and the handled ids, publishes
reports through `publish`, and asks for the reboot through a root-owned path
unit (twelvefactor-reboot), which reboots only when an installed update is
pending. One thread, one job at a time: jobs wait in a queue while one runs.

The management session's thread (`session_up`) and the threads that wait for
a final report's acknowledgement feed the machine too: a lock serialises
every event, and the quick actions it returns run under it (they write the
same files); the long ones (download, SWUpdate, waits) run on this thread
only, outside it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from twelvefactor_agent.device import bootenv, sysinfo
from twelvefactor_agent.protocol.states import FINAL, REBOOTING
from twelvefactor_agent.update import machine, steps
from twelvefactor_agent.update.decide import DEFAULT_POLICY, Policy, report_payload
from twelvefactor_agent.update.machine import (
    Action,
    DeleteArtifact,
    DeleteRecord,
    DryRun,
    Examine,
    Facts,
    Fetch,
    Log,
    LongAction,
    Measure,
    Remember,
    Report,
    ReportFinal,
    ReportRebooting,
    RequestReboot,
    SaveRecord,
    Survey,
    UpdateMachine,
    Wait,
    WriteSlot,
)
from twelvefactor_agent.update.steps import Record
from twelvefactor_agent.util.atomicfile import write_atomic

# download and swupdate (http.client, subprocess) are imported when a job
# needs them: most of a device's life has no update, and their modules cost
# resident memory.

log = logging.getLogger("twelvefactor.update")

# publish(payload, acked) -> False if the management session is offline;
# `acked` (if given) is set when the broker acknowledges the message.
Publish = Callable[[bytes, "threading.Event | None"], bool]

ACK_WAIT = machine.ACK_WAIT  # how long a final report's acknowledgement is waited for
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

Event = Callable[[UpdateMachine], list[Action]]


class _Stopping(Exception):
    pass


class _Paused(Exception):
    """The link closed (a metered device went to sleep) in the middle of a download."""


class Paths:
    """Where the update worker keeps its files."""

    def __init__(self, data_dir: Path, run_dir: Path) -> None:
        self.dir = data_dir / "update"
        self.record = self.dir / "job.json"
        self.handled = self.dir / "handled.json"
        self.reboot_request = run_dir / "reboot-request"

    def artifact(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.swu"


class Updater(threading.Thread):
    def __init__(
        self,
        *,
        device: str,
        identity: tuple[Path, Path, Path],  # the device's certificate, key and CA
        paths: Paths,
        publish: Publish,
        policy: Policy = DEFAULT_POLICY,
        read_env: Callable[[], dict[str, str] | None] = bootenv.read_boot_env,
        running_slot: Callable[[], str | None] = sysinfo.boot_slot,
        hardware: Callable[[], str | None] = sysinfo.hardware,
        os_version: Callable[[], str | None] = lambda: sysinfo.os_release()["version"],
        swupdate_client: str = "swupdate-client",
    ) -> None:
        super().__init__(name="update", daemon=True)
        self.device = device
        self.identity = identity
        self.paths = paths
        self.publish = publish
        self.policy = policy
        self.read_env = read_env
        self.running_slot = running_slot
        self.hardware = hardware
        self.os_version = os_version
        self.swupdate_client = swupdate_client
        self.inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._offered = 0  # messages put in the inbox, and those taken to the end
        self._taken = 0
        self.stopping = threading.Event()
        # Set while the device may use its link: always, unless a metered device sleeps
        # between check-ins; a download waits for it, and stops where it is when it clears.
        self.link_open = threading.Event()
        self.link_open.set()
        self.error: BaseException | None = None
        self.machine: UpdateMachine | None = None  # set once the thread has read /data
        self._lock = threading.Lock()

    @property
    def record(self) -> Record | None:
        """The job in hand, as last saved."""
        return None if self.machine is None else self.machine.record

    # -- from other threads ------------------------------------------------------

    def offer(self, payload: bytes) -> None:
        """A message on `down/update` (the management session's thread)."""
        self._offered += 1  # one writer: this thread
        self.inbox.put(payload)

    @property
    def has_mail(self) -> bool:
        """A message offered is not yet dealt with (its report, if any, not yet handed
        to `publish`): a metered check-in must not end before."""
        return self._taken != self._offered

    def session_up(self) -> None:
        """The management session (re)connected: repeat where the job stands."""
        self._feed(lambda m: m.session_up())

    def stop(self) -> None:
        self.stopping.set()

    def set_link(self, open_: bool) -> None:
        """A metered device's check-in began (True) or ended (False)."""
        if open_:
            self.link_open.set()
        else:
            self.link_open.clear()

    # -- the thread --------------------------------------------------------------

    def run(self) -> None:
        try:
            self.paths.dir.mkdir(parents=True, exist_ok=True)
            record = self._load()
            handled, outcomes = self._handled()
            with self._lock:
                self.machine = UpdateMachine(
                    device=self.device,
                    uniform=random.uniform,
                    handled=handled,
                    outcomes=outcomes,
                    policy=self.policy,
                )
            self._drive(lambda m: m.start(record))
            while not self.stopping.is_set():
                try:
                    payload = self.inbox.get(timeout=1.0)
                except queue.Empty:
                    continue
                try:
                    self._take(payload)
                finally:
                    self._taken += 1
        except _Stopping:
            log.info("update worker stopped")
        except BaseException as exc:  # the agent's main loop sees the thread end
            log.exception("update worker failed")
            self.error = exc

    def _take(self, payload: bytes) -> None:
        self._drive(lambda m: m.received(payload))

    def _drive(self, event: Event) -> None:
        """Feed `event`, then carry out each long action and feed its outcome, until none."""
        action = self._feed(event)
        while action is not None:
            action = self._feed(self._perform(action))

    def _feed(self, event: Event) -> LongAction | None:
        """Feed `event` to the machine and carry out its quick actions; the long one, if any."""
        with self._lock:
            if self.machine is None:
                return None
            actions = event(self.machine)
            for i, action in enumerate(actions):
                if isinstance(action, machine.LONG):
                    assert i == len(actions) - 1, actions
                    return action
                self._quick(action)
        return None

    def _feed_quick(self, event: Event) -> None:
        """An event that may only bring quick actions (progress, acknowledgements)."""
        action = self._feed(event)
        assert action is None, action

    # -- actions -----------------------------------------------------------------

    def _quick(self, action: Action) -> None:
        if isinstance(action, Log):
            log.log(action.level, "%s", action.text)
        elif isinstance(action, SaveRecord):
            write_atomic(self.paths.record, action.record.to_json(), 0o640)
        elif isinstance(action, DeleteRecord):
            self.paths.record.unlink(missing_ok=True)
        elif isinstance(action, Remember):
            doc = {
                "v": 1,
                "jobs": list(action.jobs),
                "outcomes": {j: [state, reason] for j, state, reason in action.outcomes},
            }
            write_atomic(self.paths.handled, json.dumps(doc).encode(), 0o640)
        elif isinstance(action, DeleteArtifact):
            self.paths.artifact(action.sha256).unlink(missing_ok=True)
        elif isinstance(action, Report):
            job, state, percent, reason = action
            payload = self._payload(job, state, percent=percent, reason=reason)
            self.publish(payload, None)
        elif isinstance(action, ReportFinal):
            self._report_final(action)
        else:
            raise AssertionError(f"not a quick action: {action!r}")

    def _perform(self, action: LongAction) -> Event:
        """Carry out a long action; the event that says how it went."""
        if isinstance(action, Examine):
            dest = self.paths.artifact(action.job.sha256)
            facts = Facts(
                hwrevision=self.hardware(),
                os_version=self.os_version(),
                free_bytes=shutil.disk_usage(self.paths.dir).free,
                partial_bytes=dest.stat().st_size if dest.exists() else 0,
                running_slot=self.running_slot(),
            )
            return lambda m: m.examined(facts)
        if isinstance(action, Survey):
            slot, boot, env = self.running_slot(), _boot_id(), self.read_env()
            return lambda m: m.surveyed(running_slot=slot, boot_id=boot, env=env)
        if isinstance(action, Measure):
            path = self.paths.artifact(action.sha256)
            size = path.stat().st_size if path.exists() else None
            return lambda m: m.measured(size)
        if isinstance(action, Fetch):
            return self._fetch(action)
        if isinstance(action, DryRun | WriteSlot):
            return self._swupdate(action)
        if isinstance(action, ReportRebooting):
            acked = threading.Event()
            payload = self._payload(action.job, REBOOTING)
            if self.publish(payload, acked):
                acked.wait(action.wait)
            return lambda m: m.rebooting_reported()
        if isinstance(action, RequestReboot):
            try:
                write_atomic(self.paths.reboot_request, f"{action.job}\n".encode(), 0o640)
            except OSError as exc:
                error = f"cannot write {self.paths.reboot_request}: {exc}"
                return lambda m: m.reboot_request_failed(error)
            return lambda m: m.reboot_requested()
        assert isinstance(action, Wait)
        self._sleep(action.seconds)
        return lambda m: m.waited()

    def _fetch(self, action: Fetch) -> Event:
        from twelvefactor_agent.update import download

        dest = self.paths.artifact(action.sha256)

        def progress(done: int, total: int) -> None:
            if self.stopping.is_set():
                raise _Stopping
            if not self.link_open.is_set():
                raise _Paused
            self._feed_quick(lambda m: m.fetch_progress(done, total))

        try:
            while True:
                self._await_link()
                try:
                    download.download(
                        action.url,
                        dest,
                        sha256=action.sha256,
                        size=action.size,
                        identity=download.ClientIdentity(*self.identity),
                        progress=progress,
                    )
                    break
                except _Paused:  # the file on /data keeps what came; Range continues it
                    have = dest.stat().st_size if dest.exists() else 0
                    log.info(
                        "download paused at %d of %d bytes until the next check-in",
                        have,
                        action.size,
                    )
        except download.ChecksumError as exc:
            error = str(exc)  # (`exc` is unbound once the handler ends)
            return lambda m: m.checksum_mismatch(error)
        except download.DownloadInterrupted as exc:
            error = str(exc)
            return lambda m: m.fetch_interrupted(error)
        except download.DownloadError as exc:
            error = str(exc)
            return lambda m: m.fetch_failed(error)
        return lambda m: m.fetched()

    def _swupdate(self, action: DryRun | WriteSlot) -> Event:
        from twelvefactor_agent.update import swupdate

        dry_run = isinstance(action, DryRun)
        try:
            swupdate.install(
                self.paths.artifact(action.sha256),
                dry_run=dry_run,
                progress=lambda done, total: self._feed_quick(
                    lambda m: m.install_progress(done, total)
                ),
                client=self.swupdate_client,
            )
        except swupdate.InstallError as exc:
            error = str(exc)
            if dry_run:
                return lambda m: m.dry_run_refused(error)
            return lambda m: m.install_failed(error)
        return (lambda m: m.dry_run_passed()) if dry_run else (lambda m: m.slot_written())

    def _report_final(self, action: ReportFinal) -> None:
        """The final report, with the steps leading to it; the machine hears of its ack."""
        acked = threading.Event()
        *after, state = action.chain
        payload = self._payload(action.job, state, reason=action.reason, after=after)
        if self.publish(payload, acked):
            threading.Thread(
                target=self._await_final, args=(action.job, acked), daemon=True
            ).start()

    def _payload(
        self,
        job: str,
        state: str,
        *,
        percent: int | None = None,
        reason: str | None = None,
        after: Sequence[str] = (),
    ) -> bytes:
        """A report, saying which artifact the job is on and why a delta was given up."""
        record = self.machine.record if self.machine is not None else None
        mine = record is not None and record.job == job
        return report_payload(
            job,
            state,
            ts=time.time(),
            percent=percent,
            reason=reason,
            after=after,
            path=record.path if mine and record else None,
            fallback=record.fallback if mine and record else None,
        )

    def _await_final(self, job: str, acked: threading.Event) -> None:
        if acked.wait(ACK_WAIT):  # else the next connect repeats it
            self._feed_quick(lambda m: m.final_acked(job))

    # -- files -------------------------------------------------------------------

    def _handled(self) -> tuple[list[str], dict[str, tuple[str, str | None]]]:
        """The handled ids and the outcomes kept with them (files written before outcomes
        were kept have none: those jobs are only not taken twice)."""
        try:
            doc = json.loads(self.paths.handled.read_bytes())
        except FileNotFoundError:
            return [], {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.paths.handled, exc)
            return [], {}
        if not isinstance(doc, dict):
            return [], {}
        ids = doc.get("jobs")
        jobs = [j for j in ids if isinstance(j, str)] if isinstance(ids, list) else []
        found = doc.get("outcomes")
        outcomes: dict[str, tuple[str, str | None]] = {}
        for job, entry in found.items() if isinstance(found, dict) else []:
            if (
                isinstance(entry, list)
                and len(entry) == 2
                and entry[0] in FINAL
                and (entry[1] is None or isinstance(entry[1], str))
            ):
                outcomes[job] = (entry[0], entry[1])
        return jobs, outcomes

    def _load(self) -> Record | None:
        try:
            raw = self.paths.record.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return steps.parse_record(raw)
        except steps.RecordError as exc:
            log.error("dropping the unreadable update record %s: %s", self.paths.record, exc)
            bad = self.paths.record.with_suffix(".bad")
            with contextlib.suppress(OSError):
                self.paths.record.rename(bad)
            return None

    def _await_link(self) -> None:
        """Return once the link is open; a metered device's download waits for its check-in."""
        while not self.link_open.wait(1.0):
            if self.stopping.is_set():
                raise _Stopping
        if self.stopping.is_set():
            raise _Stopping

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping.wait(min(1.0, max(0.0, end - time.monotonic()))):
            if time.monotonic() >= end:
                return
        raise _Stopping


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"
