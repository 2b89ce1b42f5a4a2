"""The update worker: takes a job, downloads, hands over to SWUpdate, reboots, verifies.

One thread, one job at a time. It decides with `decide.decide` (before any
byte is fetched), downloads resumably to /data (`download`), has SWUpdate
check the file with a dry run and then install it (`swupdate`), and asks for
the reboot through a root-owned path unit (twelvefactor-reboot), which
reboots only when an installed update is pending. The job's record on /data
(`steps.Record`) is written before each step, so after a power cut or a
kill the agent carries on where it was (`steps.resume`). Reports go to
the management service through `publish`; the final one is repeated on every
connect until the service has acknowledged it, then the job id is
remembered so the retained job is not taken again.
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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from twelvefactor_agent.device import bootenv, sysinfo
from twelvefactor_agent.protocol import envelope, names, states
from twelvefactor_agent.update import steps
from twelvefactor_agent.update.decide import (
    DEFAULT_POLICY,
    INVALID_JOB,
    JobError,
    Policy,
    ProgressGate,
    decide,
    parse_job,
    report_payload,
)
from twelvefactor_agent.update.steps import Download, Finish, Install, Reboot, Record, Verify
from twelvefactor_agent.util.atomicfile import write_atomic
from twelvefactor_agent.util.backoff import Backoff

if TYPE_CHECKING:
    from twelvefactor_agent.update import swupdate

# download and swupdate (http.client, subprocess) are imported when a job
# needs them: most of a device's life has no update, and their modules cost
# resident memory.

log = logging.getLogger("twelvefactor.update")

# publish(payload, acked) -> False if the management session is offline;
# `acked` (if given) is set when the broker acknowledges the message.
Publish = Callable[[bytes, "threading.Event | None"], bool]

ACK_WAIT = 30.0  # how long the `rebooting` report may take to be acknowledged
VERIFY_POLL = 2.0
REBOOT_RETRY = 120.0  # re-request a reboot that has not come
MAX_DOWNLOAD_ERRORS = 5  # consecutive non-transient download errors before giving up
MAX_CHECKSUM_ERRORS = 2
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class _Stopping(Exception):
    pass


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
        self.swupdate_client = swupdate_client
        self.inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.record: Record | None = None
        self._last: tuple[str, int | None] | None = None  # the last report, for reconnects
        self._gate = ProgressGate()
        self._lock = threading.Lock()

    # -- from other threads ------------------------------------------------------

    def offer(self, payload: bytes) -> None:
        """A message on `down/update` (the management session's thread)."""
        self.inbox.put(payload)

    def session_up(self) -> None:
        """The management session (re)connected: repeat where the job stands."""
        with self._lock:
            record, last = self.record, self._last
        if record is None:
            return
        if record.final is not None:
            self._send_final(record)
        elif last is not None:
            self._report(record.job, last[0], last[1], force=True)

    def stop(self) -> None:
        self.stopping.set()

    # -- the thread --------------------------------------------------------------

    def run(self) -> None:
        try:
            self.paths.dir.mkdir(parents=True, exist_ok=True)
            self._load()
            if self.record is not None:
                self._carry_on(self.record)
            while not self.stopping.is_set():
                try:
                    payload = self.inbox.get(timeout=1.0)
                except queue.Empty:
                    continue
                self._take(payload)
        except _Stopping:
            log.info("update worker stopped")
        except BaseException as exc:  # the agent's main loop sees the thread end
            log.exception("update worker failed")
            self.error = exc

    def _take(self, payload: bytes) -> None:
        if not payload:
            return  # the retained job was cleared
        try:
            job = parse_job(payload)
        except JobError as exc:
            job_id = _job_id(payload)
            log.warning("update job %s refused: %s", job_id or "(no id)", exc)
            if job_id is not None and job_id not in self._handled():
                self._finish_new(job_id, "failed", f"{INVALID_JOB}: {exc}")
            return
        if job.job in self._handled():
            log.info("update job %s already handled", job.job)
            return
        current = self.record
        if current is not None:
            if current.job != job.job:
                log.warning("update job %s ignored: busy with %s", job.job, current.job)
            return
        dest = self.paths.artifact(job.sha256)
        partial = dest.stat().st_size if dest.exists() else 0
        refusal = decide(
            job,
            device=self.device,
            hwrevision=sysinfo.hardware(),
            os_version=sysinfo.os_release()["version"],
            free_bytes=shutil.disk_usage(self.paths.dir).free,
            partial_bytes=partial,
            policy=self.policy,
        )
        if refusal is not None:
            log.warning("update job %s refused: %s: %s", job.job, refusal.reason, refusal.detail)
            self._finish_new(job.job, "failed", f"{refusal.reason}: {refusal.detail}")
            return
        slot = self.running_slot()
        if slot is None:
            self._finish_new(job.job, "failed", "no_slot: cannot tell which slot is running")
            return
        log.info("update job %s: version %s, %d bytes", job.job, job.version, job.size)
        record = Record(
            job.job, job.version, job.sha256, job.size, job.url, states.DOWNLOADING, slot
        )
        self._save(record)
        self._carry_on(record)

    def _carry_on(self, record: Record) -> None:
        env = self.read_env()
        step = steps.resume(record, running_slot=self.running_slot(), boot_id=_boot_id(), env=env)
        while True:
            log.info("update job %s: %s", record.job, type(step).__name__.lower())
            if isinstance(step, Download):
                step = self._download(self._record())
            elif isinstance(step, Install):
                step = self._install(self._record())
            elif isinstance(step, Reboot):
                self._reboot(self._record(), step.target_slot)
                return
            elif isinstance(step, Verify):
                step = self._verify(self._record())
            else:
                assert isinstance(step, Finish)
                self._finish(self._record(), step.state, step.reason)
                return

    def _record(self) -> Record:
        assert self.record is not None
        return self.record

    # -- steps -------------------------------------------------------------------

    def _download(self, record: Record) -> steps.Step:
        from twelvefactor_agent.update import download

        identity = download.ClientIdentity(*self.identity)
        dest = self.paths.artifact(record.sha256)
        retry = Backoff(2.0, 2.0, 60.0, random.uniform)
        errors = checksum_errors = 0

        def progress(done: int, total: int) -> None:
            if self.stopping.is_set():
                raise _Stopping
            self._report(record.job, states.DOWNLOADING, self._gate.percent(done, total))

        have = dest.stat().st_size if dest.exists() else 0
        self._report(record.job, states.DOWNLOADING, self._gate.percent(have, record.size))
        while True:
            try:
                download.download(
                    record.url,
                    dest,
                    sha256=record.sha256,
                    size=record.size,
                    identity=identity,
                    progress=progress,
                )
                return Install()
            except download.ChecksumError as exc:
                checksum_errors += 1
                log.warning("update job %s: %s", record.job, exc)
                if checksum_errors >= MAX_CHECKSUM_ERRORS:
                    return Finish("failed", f"checksum_mismatch: {exc}")
            except download.DownloadInterrupted as exc:
                errors = 0
                log.info("update job %s: download interrupted (%s); will resume", record.job, exc)
            except download.DownloadError as exc:
                errors += 1
                log.warning("update job %s: download failed: %s", record.job, exc)
                if errors >= MAX_DOWNLOAD_ERRORS:
                    return Finish("failed", f"download_failed: {exc}")
            self._sleep(retry.next_delay())

    def _install(self, record: Record) -> steps.Step:
        from twelvefactor_agent.update import swupdate

        record = record._replace(state=states.INSTALLING, installs=record.installs + 1)
        self._save(record)
        path = self.paths.artifact(record.sha256)
        if not path.exists():  # the file went (a full /data cleaned up?): fetch it again
            record = record._replace(state=states.DOWNLOADING)
            self._save(record)
            return Download()

        def phase(base: int) -> swupdate.Progress:
            def progress(done: int, total: int) -> None:
                self._report(
                    record.job, states.INSTALLING, base + self._gate.percent(done, total) // 2
                )

            return progress

        self._report(record.job, states.INSTALLING, 0)
        try:
            # every check, nothing written: a bad file never touches the idle slot
            swupdate.install(path, dry_run=True, progress=phase(0), client=self.swupdate_client)
        except swupdate.InstallError as exc:
            path.unlink(missing_ok=True)
            return Finish("failed", f"swupdate_refused: {exc}")
        try:
            swupdate.install(path, dry_run=False, progress=phase(50), client=self.swupdate_client)
        except swupdate.InstallError as exc:
            return Finish("failed", f"install_failed: {exc}")
        running = self.running_slot() or record.from_slot
        target = steps.installed_slot(self.read_env() or {}, running)
        if target is None:
            return Finish("failed", "boot_environment: SWUpdate succeeded but selected no new slot")
        return Reboot(target)

    def _reboot(self, record: Record, target: str) -> None:
        record = record._replace(state=states.REBOOTING, target_slot=target, boot_id=_boot_id())
        self._save(record)
        self.paths.artifact(record.sha256).unlink(missing_ok=True)  # installed: free /data
        self._report(record.job, states.INSTALLING, 100)
        acked = threading.Event()
        if self._report(record.job, states.REBOOTING, None, acked=acked):
            acked.wait(ACK_WAIT)
        while not self.stopping.is_set():
            log.info("update job %s: slot %s installed, requesting the reboot", record.job, target)
            try:
                write_atomic(self.paths.reboot_request, f"{record.job}\n".encode(), 0o640)
            except OSError as exc:
                log.error("cannot write %s: %s", self.paths.reboot_request, exc)
            self._sleep(REBOOT_RETRY)

    def _verify(self, record: Record) -> steps.Step:
        slot = self.running_slot() or ""
        self._report(record.job, states.REBOOTING, None)
        self._report(record.job, "verifying", None)
        log.info("update job %s: running slot %s, waiting for its confirmation", record.job, slot)
        while not steps.confirmed(self.read_env(), slot):
            self._sleep(VERIFY_POLL)
        return Finish("succeeded", "")

    # -- reports, records --------------------------------------------------------

    def _report(
        self,
        job: str,
        state: str,
        percent: int | None,
        *,
        acked: threading.Event | None = None,
        force: bool = False,
    ) -> bool:
        shown = 0 if percent is None else percent
        if not force and acked is None and not self._gate.should_report(state, shown):
            return True
        with self._lock:
            self._last = (state, percent)
        payload = report_payload(job, state, ts=time.time(), percent=percent)
        return self.publish(payload, acked)

    def _finish(self, record: Record, state: str, reason: str) -> None:
        log.log(
            logging.INFO if state == "succeeded" else logging.WARNING,
            "update job %s %s%s",
            record.job,
            state,
            f": {reason}" if reason else "",
        )
        if record.final is None:
            record = record.finished(state, reason or None)
            self._save(record)
        self.paths.artifact(record.sha256).unlink(missing_ok=True)
        self._send_final(record)

    def _finish_new(self, job: str, state: str, reason: str) -> None:
        """A job refused before it started: no record, one report."""
        self._remember(job)
        self.publish(report_payload(job, state, ts=time.time(), reason=reason[:512]), None)

    def _send_final(self, record: Record) -> None:
        """The final report (with the chain leading to it); forget the job once acknowledged."""
        assert record.final is not None
        states = steps.final_chain(record.final)
        acked = threading.Event()
        sent = True
        for state in states:
            last = state == states[-1]
            payload = report_payload(
                record.job,
                state,
                ts=time.time(),
                reason=(record.reason or "")[:512] if last and state != "succeeded" else None,
            )
            sent = self.publish(payload, acked if last else None) and sent
        with self._lock:
            self._last = (record.final, None)
        if sent:
            threading.Thread(target=self._forget_when, args=(record, acked), daemon=True).start()

    def _forget_when(self, record: Record, acked: threading.Event) -> None:
        if not acked.wait(ACK_WAIT):
            return  # the next connect repeats it
        with self._lock:
            if self.record != record:
                return
            self._remember(record.job)
            self.paths.record.unlink(missing_ok=True)
            self.record = None
            self._last = None
        log.info("update job %s: final report acknowledged", record.job)

    def _handled(self) -> list[str]:
        try:
            doc = json.loads(self.paths.handled.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.paths.handled, exc)
            return []
        ids = doc.get("jobs") if isinstance(doc, dict) else None
        return [j for j in ids if isinstance(j, str)] if isinstance(ids, list) else []

    def _remember(self, job: str) -> None:
        jobs = steps.remember(self._handled(), job)
        write_atomic(self.paths.handled, json.dumps({"v": 1, "jobs": jobs}).encode(), 0o640)

    def _save(self, record: Record) -> None:
        write_atomic(self.paths.record, record.to_json(), 0o640)
        with self._lock:
            self.record = record

    def _load(self) -> None:
        try:
            raw = self.paths.record.read_bytes()
        except FileNotFoundError:
            return
        try:
            self.record = steps.parse_record(raw)
        except steps.RecordError as exc:
            log.error("dropping the unreadable update record %s: %s", self.paths.record, exc)
            bad = self.paths.record.with_suffix(".bad")
            with contextlib.suppress(OSError):
                self.paths.record.rename(bad)
            return
        log.info("update job %s: resuming (%s)", self.record.job, self.record.state)

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


def _job_id(payload: bytes) -> str | None:
    """The job id of a payload too malformed to be a job, if it has a usable one."""
    try:
        doc = envelope.decode(payload)
    except envelope.ProtocolError:
        return None
    job = doc.get("job") if isinstance(doc, dict) else None
    return job if isinstance(job, str) and names.JOB_ID_RE.fullmatch(job) else None
