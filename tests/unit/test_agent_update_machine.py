"""The update machine (agent update/machine.py) fed events directly: no thread, no file.

`Disk` plays the I/O layer's part for the record and the handled ids: it keeps
what the machine's SaveRecord, DeleteRecord and Remember actions wrote, so a
power cut is a new machine started on what the disk holds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twelvefactor_agent.update import machine as um
from twelvefactor_agent.update.decide import Policy
from twelvefactor_agent.update.machine import (
    ENV_RETRY,
    ENV_TRIES,
    Action,
    DeleteArtifact,
    DeleteRecord,
    DryRun,
    Examine,
    Facts,
    Fetch,
    Log,
    Measure,
    Phase,
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
from twelvefactor_agent.update.steps import MAX_INSTALLS, Record

DEVICE = "dev-001"
SHA = "ab" * 32
SIZE = 1000
FACTS = Facts("qemux86-64 1.0", "1.0", 10 * SIZE + Policy().reserve_bytes, 0, "A")
ENV_A = {"slot": "A", "upgrade_available": "0", "bootcount": "0"}
INSTALLED_B = {"slot": "B", "upgrade_available": "1", "bootcount": "0"}
TRYING_B = {**INSTALLED_B, "bootcount": "1"}
CONFIRMED_B = {"slot": "B", "upgrade_available": "0", "bootcount": "0"}
FELL_BACK = {**ENV_A, "rollback": "B"}

SUCCEEDED_CHAIN = ("downloading", "installing", "rebooting", "verifying", "succeeded")


def job(job_id: str = "j-1", **kw: Any) -> bytes:
    doc: dict[str, Any] = {
        "v": 1,
        "job": job_id,
        "device": DEVICE,
        "version": "2.0",
        "hardware": {"qemux86-64": ["1.0"]},
        "sha256": SHA,
        "size": SIZE,
        "url": "https://10.99.0.1:8443/artifacts/a.swu",
    }
    doc.update(kw)
    return json.dumps(doc).encode()


def ceiling(low: float, high: float) -> float:
    return high  # the backoff's longest delay: deterministic


class Disk:
    """What the machine's actions left on /data."""

    def __init__(self) -> None:
        self.record: Record | None = None
        self.handled: list[str] = []
        self.outcomes: dict[str, tuple[str, str | None]] = {}

    def take(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            if isinstance(action, SaveRecord):
                self.record = action.record
            elif isinstance(action, DeleteRecord):
                self.record = None
            elif isinstance(action, Remember):
                self.handled = list(action.jobs)
                self.outcomes = {j: (state, reason) for j, state, reason in action.outcomes}
        return actions


class Device:
    """A machine and its disk; `boot` starts a new machine on what the disk holds."""

    def __init__(self, **kw: Any) -> None:
        self.disk = Disk()
        self.kw = kw
        self.m = UpdateMachine(device=DEVICE, uniform=ceiling, **kw)

    def __call__(self, event: Callable[[UpdateMachine], list[Action]]) -> list[Action]:
        return self.disk.take(event(self.m))

    def boot(self) -> list[Action]:
        self.m = UpdateMachine(
            device=DEVICE,
            uniform=ceiling,
            handled=self.disk.handled,
            outcomes=self.disk.outcomes,
            **self.kw,
        )
        return self(lambda m: m.start(self.disk.record))


def long(actions: list[Action]) -> Action | None:
    last = actions[-1] if actions else None
    return last if isinstance(last, um.LONG) else None


def reports(actions: list[Action]) -> list[tuple[str, int | None]]:
    return [(a.state, a.percent) for a in actions if isinstance(a, Report)]


def final(actions: list[Action]) -> ReportFinal:
    (report,) = [a for a in actions if isinstance(a, ReportFinal)]
    return report


def to_download(d: Device, payload: bytes | None = None) -> None:
    """A new job taken, up to its first Fetch."""
    assert isinstance(long(d(lambda m: m.received(payload or job()))), Examine)
    assert long(d(lambda m: m.examined(FACTS))) == Survey()
    assert d.disk.record is not None and d.disk.record.state == "downloading"
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-1", env=ENV_A))
    assert long(out) == Measure(SHA)
    out = d(lambda m: m.measured(None))
    assert reports(out) == [("downloading", 0)]
    assert long(out) == Fetch("https://10.99.0.1:8443/artifacts/a.swu", SHA, SIZE)


def to_dry_run(d: Device) -> None:
    to_download(d)
    out = d(lambda m: m.fetched())
    assert long(out) == Measure(SHA)
    assert d.disk.record is not None and d.disk.record.state == "installing"
    out = d(lambda m: m.measured(SIZE))
    assert reports(out) == [("installing", 0)] and long(out) == DryRun(SHA)


def to_reboot(d: Device) -> list[Action]:
    to_dry_run(d)
    assert d(lambda m: m.dry_run_passed()) == [WriteSlot(SHA)]
    assert d(lambda m: m.slot_written()) == [Survey()]
    return d(lambda m: m.surveyed(running_slot="A", boot_id="boot-1", env=INSTALLED_B))


# -- a good job ----------------------------------------------------------------------------


def test_a_good_job_end_to_end() -> None:
    d = Device()
    to_download(d)
    assert reports(d(lambda m: m.fetch_progress(30, SIZE))) == []  # under the 5 % step
    assert reports(d(lambda m: m.fetch_progress(500, SIZE))) == [("downloading", 50)]
    assert reports(d(lambda m: m.fetch_progress(SIZE, SIZE))) == [("downloading", 100)]
    to_install = d(lambda m: m.fetched())
    assert d.disk.record is not None and d.disk.record.installs == 1
    assert long(to_install) == Measure(SHA)
    assert long(d(lambda m: m.measured(SIZE))) == DryRun(SHA)
    # the dry run is 0-49 %, the install 50-99 %
    assert reports(d(lambda m: m.install_progress(SIZE, SIZE))) == [("installing", 50)]
    assert d(lambda m: m.dry_run_passed()) == [WriteSlot(SHA)]
    assert reports(d(lambda m: m.install_progress(SIZE // 2, SIZE))) == [("installing", 75)]
    assert d(lambda m: m.slot_written()) == [Survey()]
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-1", env=INSTALLED_B))
    # the record says rebooting (to B, on this boot) before anything else happens
    saved = [a for a in out if isinstance(a, SaveRecord)]
    assert out.index(saved[0]) < out.index(DeleteArtifact(SHA))
    assert saved[0].record.state == "rebooting" and saved[0].record.target_slot == "B"
    assert saved[0].record.boot_id == "boot-1"
    assert reports(out) == [("installing", 100)]
    assert long(out) == ReportRebooting("j-1", um.ACK_WAIT)
    out = d(lambda m: m.rebooting_reported())
    assert long(out) == RequestReboot("j-1")
    assert d(lambda m: m.reboot_requested()) == [Wait(um.REBOOT_RETRY)]

    # the device reboots into B: a new agent, a new boot
    assert long(d.boot()) == Survey()
    out = d(lambda m: m.surveyed(running_slot="B", boot_id="boot-2", env=TRYING_B))
    assert reports(out) == [("rebooting", None), ("verifying", None)]
    assert long(out) == Survey()
    # not confirmed yet: look again a little later
    assert d(lambda m: m.surveyed(running_slot="B", boot_id="boot-2", env=TRYING_B)) == [
        Wait(um.VERIFY_POLL)
    ]
    assert d(lambda m: m.waited()) == [Survey()]
    out = d(lambda m: m.surveyed(running_slot="B", boot_id="boot-2", env=CONFIRMED_B))
    assert final(out) == ReportFinal(
        "j-1", ("downloading", "installing", "rebooting", "verifying", "succeeded"), None
    )
    assert d.disk.record is not None and d.disk.record.final == "succeeded"
    assert long(out) is None
    out = d(lambda m: m.final_acked("j-1"))
    assert DeleteRecord() in out and d.disk.record is None and d.disk.handled == ["j-1"]
    assert d.m.phase is Phase.IDLE


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "code"),
    [
        (FACTS._replace(hwrevision=None), "no_hwrevision"),
        (FACTS._replace(hwrevision="qemux86-64 9.9"), "wrong_hardware"),
        (FACTS._replace(os_version="rolling"), "version_unknown"),
        (FACTS._replace(os_version="2.0"), "same_version"),
        (FACTS._replace(os_version="3.0"), "downgrade"),
        (FACTS._replace(free_bytes=SIZE), "no_space"),
        (FACTS._replace(running_slot=None), "no_slot"),
    ],
)
def test_each_refusal_is_reported_once_and_remembered(facts: Facts, code: str) -> None:
    d = Device()
    assert isinstance(long(d(lambda m: m.received(job()))), Examine)
    out = d(lambda m: m.examined(facts))
    assert d.disk.handled == ["j-1"] and d.disk.record is None
    ((state, _),) = reports(out)
    (report,) = [a for a in out if isinstance(a, Report)]
    assert state == "failed" and report.reason is not None and report.reason.startswith(code)
    assert long(out) is None and d.m.phase is Phase.IDLE
    assert d(lambda m: m.session_up()) == []  # a refusal is not repeated on connect


def test_wrong_device_and_invalid_jobs() -> None:
    d = Device()
    d(lambda m: m.received(job(device="dev-other")))
    out = d(lambda m: m.examined(FACTS))
    (report,) = [a for a in out if isinstance(a, Report)]
    assert report.reason is not None and report.reason.startswith("wrong_device: ")

    out = d(lambda m: m.received(job("j-bad", url="http://plain/a.swu")))
    (report,) = [a for a in out if isinstance(a, Report)]
    assert report.job == "j-bad" and report.reason is not None
    assert report.reason.startswith("invalid_job: ") and d.disk.handled[-1] == "j-bad"
    # an invalid job without a usable id, or already handled, is only logged
    assert not reports(d(lambda m: m.received(b"{not json")))
    assert not reports(d(lambda m: m.received(job("j-bad", url="http://plain/a.swu"))))
    assert d(lambda m: m.received(b"")) == []  # the retained job was cleared


def test_a_downgrade_is_taken_when_the_policy_allows_it() -> None:
    d = Device(policy=Policy(allow_downgrade=True))
    d(lambda m: m.received(job()))
    assert d(lambda m: m.examined(FACTS._replace(os_version="3.0")))[-1] == Survey()


# -- download errors -----------------------------------------------------------------------


def test_a_dropped_link_is_retried_with_backoff_without_limit() -> None:
    d = Device()
    to_download(d)
    delays = []
    for _ in range(3 * um.MAX_DOWNLOAD_ERRORS):
        wait = long(d(lambda m: m.fetch_interrupted("timed out")))
        assert isinstance(wait, Wait)
        delays.append(wait.seconds)
        assert isinstance(long(d(lambda m: m.waited())), Fetch)
    assert delays[:7] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0] and max(delays) == 60.0
    assert isinstance(long(d(lambda m: m.fetched())), Measure)
    assert d.disk.record is not None and d.disk.record.state == "installing"


def test_other_download_errors_give_up_after_the_limit() -> None:
    d = Device()
    to_download(d)
    for _ in range(um.MAX_DOWNLOAD_ERRORS - 1):
        assert isinstance(long(d(lambda m: m.fetch_failed("HTTP 404 Not Found"))), Wait)
        d(lambda m: m.waited())
    # a dropped link in between starts the count again
    d(lambda m: m.fetch_interrupted("reset"))
    d(lambda m: m.waited())
    for _ in range(um.MAX_DOWNLOAD_ERRORS - 1):
        assert isinstance(long(d(lambda m: m.fetch_failed("HTTP 404 Not Found"))), Wait)
        d(lambda m: m.waited())
    out = d(lambda m: m.fetch_failed("HTTP 404 Not Found"))
    assert final(out) == ReportFinal("j-1", ("failed",), "download_failed: HTTP 404 Not Found")
    assert DeleteArtifact(SHA) in out and long(out) is None
    assert d.disk.record is not None and d.disk.record.final == "failed"


def test_a_checksum_mismatch_twice_fails_the_job() -> None:
    d = Device()
    to_download(d)
    assert isinstance(long(d(lambda m: m.checksum_mismatch("sha256 x is not y"))), Wait)
    d(lambda m: m.waited())
    out = d(lambda m: m.checksum_mismatch("sha256 x is not y"))
    assert final(out).reason == "checksum_mismatch: sha256 x is not y"


# -- install -------------------------------------------------------------------------------


def test_a_dry_run_refusal_fails_without_touching_the_slot() -> None:
    d = Device()
    to_dry_run(d)
    out = d(lambda m: m.dry_run_refused("signature check failed"))
    assert DeleteArtifact(SHA) in out
    assert final(out).reason == "swupdate_refused: signature check failed"
    # the install never comes, whatever follows
    for event in (
        lambda m: m.dry_run_passed(),
        lambda m: m.slot_written(),
        um.UpdateMachine.waited,
    ):
        assert not any(isinstance(a, WriteSlot | RequestReboot) for a in d(event))


def test_an_install_failure_fails_the_job() -> None:
    d = Device()
    to_dry_run(d)
    d(lambda m: m.dry_run_passed())
    out = d(lambda m: m.install_failed("raw handler: write error"))
    assert final(out).reason == "install_failed: raw handler: write error"
    assert DeleteArtifact(SHA) in out


def test_an_install_that_selects_no_slot_fails() -> None:
    d = Device()
    to_dry_run(d)
    d(lambda m: m.dry_run_passed())
    d(lambda m: m.slot_written())
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-1", env=ENV_A))
    assert final(out).reason == "boot_environment: SWUpdate succeeded but selected no new slot"


def test_an_artifact_gone_before_the_install_is_downloaded_again() -> None:
    d = Device()
    to_download(d)
    d(lambda m: m.fetched())
    out = d(lambda m: m.measured(None))
    assert d.disk.record is not None and d.disk.record.state == "downloading"
    assert long(out) == Measure(SHA) and d.m.phase is Phase.MEASURING_DOWNLOAD


# -- reboot --------------------------------------------------------------------------------


def test_a_failed_reboot_request_is_retried() -> None:
    d = Device()
    to_reboot(d)
    assert long(d(lambda m: m.rebooting_reported())) == RequestReboot("j-1")
    out = d(lambda m: m.reboot_request_failed("cannot write /run/twelvefactor/reboot-request"))
    assert long(out) == Wait(um.REBOOT_RETRY)
    assert long(d(lambda m: m.waited())) == RequestReboot("j-1")
    assert long(d(lambda m: m.reboot_requested())) == Wait(um.REBOOT_RETRY)
    assert long(d(lambda m: m.waited())) == RequestReboot("j-1")


# -- power cuts ----------------------------------------------------------------------------

RECORD = Record("j-1", "2.0", SHA, SIZE, "https://10.99.0.1:8443/artifacts/a.swu", "", "A")


@pytest.mark.parametrize(
    ("record", "slot", "boot", "env", "measured", "expected"),
    [
        # downloading: continue from the partial file
        (RECORD._replace(state="downloading"), "A", "boot-2", ENV_A, 400, Fetch),
        # installing, the old slot still selected: install again (one attempt more)
        (RECORD._replace(state="installing", installs=1), "A", "boot-2", ENV_A, SIZE, DryRun),
        # installing, SWUpdate finished before the record said so: on to the reboot
        (RECORD._replace(state="installing", installs=1), "A", "boot-1", INSTALLED_B, 0, None),
        # rebooting, the agent restarted before the device did: request it again
        (
            RECORD._replace(state="rebooting", target_slot="B", boot_id="boot-1"),
            "A",
            "boot-1",
            INSTALLED_B,
            0,
            None,
        ),
    ],
)
def test_a_power_cut_carries_on_with_the_right_step(
    record: Record,
    slot: str,
    boot: str,
    env: dict[str, str],
    measured: int,
    expected: type | None,
) -> None:
    d = Device()
    d.disk.record = record
    assert d.boot()[-1] == Survey()
    out = d(lambda m: m.surveyed(running_slot=slot, boot_id=boot, env=env))
    if expected is None:  # the reboot: the record says so before the request
        assert d.disk.record is not None and d.disk.record.state == "rebooting"
        assert long(out) == ReportRebooting("j-1", um.ACK_WAIT)
        return
    assert long(out) == Measure(SHA)
    if record.state == "installing":
        assert d.disk.record is not None and d.disk.record.installs == record.installs + 1
    out = d(lambda m: m.measured(measured))
    assert isinstance(long(out), expected)
    if expected is Fetch:
        assert reports(out) == [("downloading", 40)]


def test_power_cuts_inside_swupdate_give_up_after_the_limit() -> None:
    d = Device()
    to_dry_run(d)
    for _ in range(MAX_INSTALLS - 1):
        d.boot()
        d(lambda m: m.surveyed(running_slot="A", boot_id="boot-x", env=ENV_A))
        assert isinstance(long(d(lambda m: m.measured(SIZE))), DryRun)
    d.boot()
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-y", env=ENV_A))
    reason = final(out).reason
    assert reason is not None and reason.startswith("install_interrupted: 5 attempts")


def test_an_unreadable_boot_environment_is_looked_at_again_before_giving_up() -> None:
    """A power cut while the boot environment was written (seen in the boot tier) leaves
    it unreadable until the boot's confirmation rewrites it: the job waits for that."""
    d = Device()
    to_dry_run(d)
    d.boot()
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-x", env=None))
    assert long(out) == Wait(ENV_RETRY) and reports(out) == []
    assert isinstance(long(d(lambda m: m.waited())), Survey)
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-x", env=ENV_A))
    assert isinstance(long(out), Measure)  # readable again: the install goes on
    # Never readable: the job fails after ENV_TRIES looks, saying why.
    d = Device()
    to_dry_run(d)
    d.boot()
    for _ in range(ENV_TRIES):
        assert long(d(lambda m: m.surveyed(running_slot="A", boot_id="b", env=None))) == Wait(
            ENV_RETRY
        )
        d(lambda m: m.waited())
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="b", env=None))
    assert final(out).reason == "cannot read the boot environment"


def test_back_on_the_old_slot_is_a_rollback() -> None:
    d = Device()
    to_reboot(d)
    d.boot()
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-4", env=FELL_BACK))
    report = final(out)
    assert report.chain == ("downloading", "installing", "rebooting", "rolled_back")
    assert report.reason is not None and "did not confirm itself in 3 boots" in report.reason


def test_a_final_report_not_acknowledged_is_kept_and_sent_again() -> None:
    d = Device()
    to_download(d)
    for _ in range(um.MAX_CHECKSUM_ERRORS):
        d(lambda m: m.checksum_mismatch("bad"))
        d(lambda m: m.waited())
    sent = final(d.m.session_up())
    assert sent.chain == ("failed",) and d.disk.record is not None
    assert d(lambda m: m.final_acked("j-other")) == []
    # a power cut: the final report again, the record as it was (no new save)
    saved = d.disk.record
    out = d.boot()
    out += d(lambda m: m.surveyed(running_slot="A", boot_id="boot-2", env=ENV_A))
    assert final(out) == sent and not any(isinstance(a, SaveRecord) for a in out)
    assert d.disk.record == saved
    # a new job waits while the last one's report is not acknowledged
    assert not any(isinstance(a, Examine) for a in d(lambda m: m.received(job("j-2"))))
    d(lambda m: m.final_acked("j-1"))
    assert d.disk.record is None
    assert isinstance(long(d(lambda m: m.received(job("j-2")))), Examine)


def test_reconnects_repeat_the_last_progress() -> None:
    d = Device()
    assert d.m.session_up() == []
    to_download(d)
    d(lambda m: m.fetch_progress(420, SIZE))
    d(lambda m: m.fetch_progress(430, SIZE))  # gated: not sent, not the last report
    assert d.m.session_up() == [Report("j-1", "downloading", 42)]


# -- the retained job ----------------------------------------------------------------------


def test_a_retained_job_already_handled_is_ignored() -> None:
    d = Device()
    d.disk.handled = ["j-1"]
    d.boot()
    out = d(lambda m: m.received(job()))
    assert not reports(out) and long(out) is None
    assert out == [Log(logging.INFO, "update job j-1 already handled")]


def test_a_job_offered_again_after_its_end_gets_its_final_report_again() -> None:
    """The service offers a job again when it heard nothing of it for a while: a final
    report lost with a service copy, or across a broker restart (docs/protocol.md)."""
    d = Device()
    to_reboot(d)
    d(lambda m: m.rebooting_reported())
    d.boot()
    d(lambda m: m.surveyed(running_slot="B", boot_id="boot-2", env=TRYING_B))
    d(lambda m: m.surveyed(running_slot="B", boot_id="boot-2", env=CONFIRMED_B))
    d(lambda m: m.final_acked("j-1"))
    assert d.disk.outcomes == {"j-1": ("succeeded", None)}
    again = ReportFinal(
        "j-1", ("downloading", "installing", "rebooting", "verifying", "succeeded"), None
    )
    assert final(d(lambda m: m.received(job()))) == again
    d.boot()  # kept on /data
    out = d(lambda m: m.received(job()))
    assert out[0] == Log(logging.INFO, "update job j-1 already handled: reporting succeeded again")
    assert final(out) == again and long(out) is None and d.m.phase is Phase.IDLE
    # its acknowledgement changes nothing: there is no record to forget
    assert d(lambda m: m.final_acked("j-1")) == [] and d.disk.handled == ["j-1"]
    # a refusal is remembered with its reason, and a newer job is still taken
    other = job("j-2", hardware={"other-board": ["1.0"]})
    assert isinstance(long(d(lambda m: m.received(other))), Examine)
    out = d(lambda m: m.examined(FACTS))
    (refusal,) = [a for a in out if isinstance(a, Report)]
    assert refusal.state == "failed" and str(refusal.reason).startswith("wrong_hardware")
    assert d.disk.outcomes["j-2"] == ("failed", refusal.reason)
    assert final(d(lambda m: m.received(other))) == ReportFinal("j-2", ("failed",), refusal.reason)
    assert isinstance(long(d(lambda m: m.received(job("j-3")))), Examine)


def test_the_job_in_hand_arriving_again_changes_nothing() -> None:
    d = Device()
    to_download(d)
    assert d(lambda m: m.received(job())) == []
    out = d(lambda m: m.received(job("j-2")))
    assert out == [Log(logging.WARNING, "update job j-2 ignored: busy with j-1")]
    assert d.m.phase is Phase.DOWNLOADING


# -- download only: held after the download, installed on the go ----------------------------

HOLD = job(install="hold")


def to_held(d: Device) -> None:
    to_download(d, HOLD)
    out = d(lambda m: m.fetched())
    assert long(out) == Measure(SHA)  # is the file still there when it is held?
    assert d.disk.record is not None and d.disk.record.state == "downloaded"
    assert d.disk.record.hold
    out = d(lambda m: m.measured(SIZE))
    assert reports(out) == [("downloaded", None)] and long(out) is None
    assert d.m.phase is Phase.HELD


def test_a_held_job_waits_after_its_download_and_installs_on_the_go() -> None:
    d = Device()
    to_held(d)
    assert d(lambda m: m.received(HOLD)) == []  # the retained copy on a reconnect
    assert reports(d(lambda m: m.session_up())) == [("downloaded", None)]
    out = d(lambda m: m.received(job(install="now")))
    assert long(out) == Measure(SHA)
    assert d.disk.record is not None and not d.disk.record.hold
    assert d.disk.record.state == "installing"
    out = d(lambda m: m.measured(SIZE))
    assert reports(out) == [("installing", 0)] and long(out) == DryRun(SHA)


def test_a_job_released_while_it_downloads_installs_once_fetched() -> None:
    d = Device()
    to_download(d, HOLD)
    out = d(lambda m: m.received(job()))  # no `install`: now
    assert long(out) is None
    assert d.disk.record is not None and not d.disk.record.hold
    assert long(d(lambda m: m.fetched())) == Measure(SHA)
    assert d.disk.record is not None and d.disk.record.state == "installing"


def test_a_power_cut_while_held_holds_again_or_fetches_a_lost_file() -> None:
    d = Device()
    to_held(d)
    assert long(d.boot()) == Survey()
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-2", env=ENV_A))
    assert long(out) == Measure(SHA)
    out = d(lambda m: m.measured(SIZE))
    assert reports(out) == [("downloaded", None)] and d.m.phase is Phase.HELD
    # the file went from /data while the device was off: download it again, then hold
    d.boot()
    d(lambda m: m.surveyed(running_slot="A", boot_id="boot-3", env=ENV_A))
    out = d(lambda m: m.measured(None))
    assert long(out) == Measure(SHA)
    assert d.disk.record is not None and d.disk.record.state == "downloading"
    out = d(lambda m: m.measured(None))
    assert reports(out) == [("downloading", 0)] and isinstance(long(out), Fetch)


def test_a_job_released_just_before_a_power_cut_installs_after_it() -> None:
    d = Device()
    d.disk.record = RECORD._replace(state="downloaded", hold=False)
    d.boot()
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-2", env=ENV_A))
    assert long(out) == Measure(SHA)
    assert d.disk.record is not None and d.disk.record.state == "installing"


def test_a_held_job_cancelled_drops_the_file_and_fails() -> None:
    d = Device()
    to_held(d)
    out = d(lambda m: m.received(job(install="cancel")))
    assert DeleteArtifact(SHA) in out
    assert final(out) == ReportFinal("j-1", ("failed",), um.CANCELLED)
    assert d.disk.record is not None and d.disk.record.final == "failed"
    d(lambda m: m.final_acked("j-1"))
    assert d.disk.record is None and d.disk.handled == ["j-1"]


def test_a_cancel_before_the_job_started_is_reported_and_one_after_the_hold_ignored() -> None:
    d = Device()
    out = d(lambda m: m.received(job(install="cancel")))
    assert [(a.state, a.reason) for a in out if isinstance(a, Report)] == [("failed", um.CANCELLED)]
    assert d.disk.handled == ["j-1"] and d.disk.record is None
    d = Device()
    to_dry_run(d)  # a job that was never held: too late to cancel
    assert d(lambda m: m.received(job(install="cancel"))) == []


def test_an_unknown_install_mode_is_an_invalid_job() -> None:
    out = Device()(lambda m: m.received(job(install="later")))
    (report,) = [a for a in out if isinstance(a, Report)]
    assert report.state == "failed" and report.reason is not None
    assert report.reason.startswith("invalid_job: install must be one of now, hold, cancel")


# -- delta updates: the delta first, the full .swu if anything about it fails ---------------

URL = "https://10.99.0.1:8443/artifacts/a.swu"
DSHA = "cd" * 32
DSIZE = 100
DURL = "https://10.99.0.1:8443/artifacts/d.swu"
DELTA = job(delta={"sha256": DSHA, "size": DSIZE, "url": DURL})


def to_delta_download(d: Device, payload: bytes = DELTA) -> None:
    """A delta job taken, up to the first Fetch: of the delta, the full .swu kept aside."""
    assert isinstance(long(d(lambda m: m.received(payload))), Examine)
    assert long(d(lambda m: m.examined(FACTS))) == Survey()
    record = d.disk.record
    assert record is not None and record.state == "downloading"
    assert (record.sha256, record.size, record.url) == (DSHA, DSIZE, DURL)
    assert record.full == (SHA, SIZE, URL) and record.path == "delta"
    assert record.fallback is None
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-1", env=ENV_A))
    assert long(out) == Measure(DSHA)
    out = d(lambda m: m.measured(None))
    assert reports(out) == [("downloading", 0)]
    assert long(out) == Fetch(DURL, DSHA, DSIZE)


def to_delta_dry_run(d: Device) -> None:
    to_delta_download(d)
    assert long(d(lambda m: m.fetched())) == Measure(DSHA)
    assert d.disk.record is not None and d.disk.record.state == "installing"
    out = d(lambda m: m.measured(DSIZE))
    assert reports(out) == [("installing", 0)] and long(out) == DryRun(DSHA)


def delta_download_fails(d: Device) -> list[Action]:
    to_delta_download(d)
    for _ in range(um.MAX_DOWNLOAD_ERRORS - 1):
        assert isinstance(long(d(lambda m: m.fetch_failed("HTTP 404 Not Found"))), Wait)
        assert long(d(lambda m: m.waited())) == Fetch(DURL, DSHA, DSIZE)
    return d(lambda m: m.fetch_failed("HTTP 404 Not Found"))


def delta_checksum_mismatches(d: Device) -> list[Action]:
    to_delta_download(d)
    for _ in range(um.MAX_CHECKSUM_ERRORS - 1):
        assert isinstance(long(d(lambda m: m.checksum_mismatch("sha256 x is not y"))), Wait)
        d(lambda m: m.waited())
    return d(lambda m: m.checksum_mismatch("sha256 x is not y"))


def delta_dry_run_refused(d: Device) -> list[Action]:
    to_delta_dry_run(d)
    return d(lambda m: m.dry_run_refused("delta handler: no source"))


def delta_install_fails(d: Device) -> list[Action]:
    to_delta_dry_run(d)
    assert d(lambda m: m.dry_run_passed()) == [WriteSlot(DSHA)]
    return d(lambda m: m.install_failed("delta handler: chunk hash mismatch"))


def fell_back(d: Device, out: list[Action], reason: str) -> Record:
    """The delta dropped, the record on the full .swu, its download begun."""
    assert DeleteArtifact(DSHA) in out
    assert not any(isinstance(a, ReportFinal) for a in out)
    assert not any(isinstance(a, Report) and a.state == "failed" for a in out)
    record = d.disk.record
    assert record is not None and record == d.m.record
    assert (record.sha256, record.size, record.url) == (SHA, SIZE, URL)
    assert record.full is None and record.path == "full"
    assert record.fallback == reason
    assert record.installs == 0 and record.state == "downloading" and record.final is None
    # the record says so before anything is fetched
    (save,) = [a for a in out if isinstance(a, SaveRecord)]
    assert out.index(save) < len(out) - 1 and save.record == record
    assert long(out) == Measure(SHA) and d.m.phase is Phase.MEASURING_DOWNLOAD
    return record


@pytest.mark.parametrize(
    ("fail", "reason"),
    [
        (delta_download_fails, "download_failed: HTTP 404 Not Found"),
        (delta_checksum_mismatches, "checksum_mismatch: sha256 x is not y"),
        (delta_dry_run_refused, "swupdate_refused: delta handler: no source"),
        (delta_install_fails, "install_failed: delta handler: chunk hash mismatch"),
    ],
)
def test_a_failed_delta_falls_back_to_the_full_swu(
    fail: Callable[[Device], list[Action]], reason: str
) -> None:
    d = Device()
    fell_back(d, fail(d), reason)
    out = d(lambda m: m.measured(None))
    assert long(out) == Fetch(URL, SHA, SIZE)
    # the full download's first report goes out at once, whatever the delta's last said
    # (from an install it is also the transition the fallback added: installing ->
    # downloading), so the service learns the path changed
    assert reports(out) == [("downloading", 0)]
    # the full .swu then installs as any job's
    assert long(d(lambda m: m.fetched())) == Measure(SHA)
    assert d.disk.record is not None and d.disk.record.installs == 1
    assert long(d(lambda m: m.measured(SIZE))) == DryRun(SHA)
    assert d(lambda m: m.dry_run_passed()) == [WriteSlot(SHA)]


def test_a_long_fallback_reason_is_cut_to_the_protocols_bound() -> None:
    d = Device()
    to_delta_dry_run(d)
    out = d(lambda m: m.dry_run_refused("x" * 2000))
    record = fell_back(d, out, ("swupdate_refused: " + "x" * 2000)[: um.MAX_REASON])
    assert record.fallback is not None and len(record.fallback) == um.MAX_REASON


def test_the_full_swus_own_download_failure_then_ends_the_job() -> None:
    d = Device()
    first = fell_back(d, delta_download_fails(d), "download_failed: HTTP 404 Not Found")
    assert long(d(lambda m: m.measured(None))) == Fetch(URL, SHA, SIZE)
    # the full .swu has its own count of download errors
    for _ in range(um.MAX_DOWNLOAD_ERRORS - 1):
        assert isinstance(long(d(lambda m: m.fetch_failed("HTTP 403 Forbidden"))), Wait)
        assert long(d(lambda m: m.waited())) == Fetch(URL, SHA, SIZE)
    out = d(lambda m: m.fetch_failed("HTTP 403 Forbidden"))
    reason = "download_failed: HTTP 403 Forbidden"
    assert final(out) == ReportFinal("j-1", ("failed",), reason)
    assert DeleteArtifact(SHA) in out and long(out) is None
    record = d.disk.record
    assert record is not None and record.final == "failed" and record.reason == reason
    # what made the device give the delta up is still said beside it
    assert record.path == "full" and record.fallback == first.fallback


@pytest.mark.parametrize(
    ("last", "reason"),
    [
        (lambda m: m.dry_run_refused("bad signature"), "swupdate_refused: bad signature"),
        (lambda m: m.install_failed("raw handler: write error"), "install_failed: raw handler"),
    ],
)
def test_the_full_swus_own_install_failure_then_ends_the_job(
    last: Callable[[UpdateMachine], list[Action]], reason: str
) -> None:
    d = Device()
    first = fell_back(
        d, delta_install_fails(d), "install_failed: delta handler: chunk hash mismatch"
    )
    d(lambda m: m.measured(None))
    d(lambda m: m.fetched())
    assert long(d(lambda m: m.measured(SIZE))) == DryRun(SHA)
    if "install_failed" in reason:
        assert d(lambda m: m.dry_run_passed()) == [WriteSlot(SHA)]
    out = d(last)
    report = final(out)
    assert report.chain == ("failed",) and report.reason is not None
    assert report.reason.startswith(reason)
    assert DeleteArtifact(SHA) in out and long(out) is None
    assert not any(isinstance(a, Measure | Fetch) for a in out)  # no second fallback
    record = d.disk.record
    assert record is not None and record.final == "failed" and record.reason == report.reason
    assert record.path == "full" and record.fallback == first.fallback


def test_a_power_cut_during_the_delta_resumes_it_and_falls_back_once_attempts_run_out() -> None:
    d = Device()
    to_delta_dry_run(d)
    for attempt in range(2, MAX_INSTALLS + 1):
        assert long(d.boot()) == Survey()
        out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-x", env=ENV_A))
        assert long(out) == Measure(DSHA)  # the delta again, one attempt more
        record = d.disk.record
        assert record is not None and record.installs == attempt and record.path == "delta"
        assert isinstance(long(d(lambda m: m.measured(DSIZE))), DryRun)
    d.boot()
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-y", env=ENV_A))
    record = fell_back(d, out, f"install_interrupted: {MAX_INSTALLS} attempts did not finish")
    assert not any(isinstance(a, ReportFinal) for a in out)
    # a power cut right after the fallback: the full .swu's download goes on
    assert long(d.boot()) == Survey()
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-z", env=ENV_A))
    assert long(out) == Measure(SHA) and d.disk.record == record
    out = d(lambda m: m.measured(SIZE // 2))
    assert reports(out) == [("downloading", 50)] and long(out) == Fetch(URL, SHA, SIZE)
    # the full .swu's install has its own attempts, and no fallback after them
    d(lambda m: m.fetched())
    assert d.disk.record is not None and d.disk.record.installs == 1
    for _ in range(MAX_INSTALLS - 1):
        d.boot()
        out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-w", env=ENV_A))
        assert long(out) == Measure(SHA)
    d.boot()
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-v", env=ENV_A))
    reason = final(out).reason
    assert reason == f"install_interrupted: {MAX_INSTALLS} attempts did not finish"
    assert d.disk.record is not None and d.disk.record.fallback == record.fallback


def test_a_power_cut_during_the_delta_download_resumes_the_delta() -> None:
    d = Device()
    to_delta_download(d)
    d.boot()
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-2", env=ENV_A))
    assert long(out) == Measure(DSHA)
    assert long(d(lambda m: m.measured(DSIZE // 2))) == Fetch(DURL, DSHA, DSIZE)


def test_a_finished_delta_job_repeats_its_report_after_a_power_cut_without_falling_back() -> None:
    """A final record of the delta (its report not yet acknowledged) is not a failed
    install: no fallback, the same report again."""
    d = Device()
    to_delta_dry_run(d)
    for _ in range(MAX_INSTALLS - 1):
        d.boot()
        d(lambda m: m.surveyed(running_slot="A", boot_id="b", env=ENV_A))
        d(lambda m: m.measured(DSIZE))
    record = d.disk.record
    assert record is not None
    d.disk.record = record.finished("failed", f"install_interrupted: {MAX_INSTALLS} attempts")
    d.boot()
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="b", env=ENV_A))
    assert final(out).reason == f"install_interrupted: {MAX_INSTALLS} attempts"
    assert not any(isinstance(a, SaveRecord | Measure) for a in out)


def test_cancelling_a_held_delta_job_does_not_fall_back() -> None:
    d = Device()
    to_delta_download(d, job(install="hold", delta={"sha256": DSHA, "size": DSIZE, "url": DURL}))
    assert long(d(lambda m: m.fetched())) == Measure(DSHA)
    out = d(lambda m: m.measured(DSIZE))
    assert reports(out) == [("downloaded", None)] and d.m.phase is Phase.HELD
    out = d(lambda m: m.received(job(install="cancel")))
    assert DeleteArtifact(DSHA) in out and long(out) is None
    assert final(out) == ReportFinal("j-1", ("failed",), um.CANCELLED)
    assert not any(isinstance(a, Fetch | Measure) for a in out)
    record = d.disk.record
    assert record is not None and record.final == "failed" and record.reason == um.CANCELLED
    assert record.path == "delta" and record.fallback is None


def test_a_held_delta_that_fails_to_download_holds_the_full_swu() -> None:
    d = Device()
    to_delta_download(d, job(install="hold", delta={"sha256": DSHA, "size": DSIZE, "url": DURL}))
    for _ in range(um.MAX_CHECKSUM_ERRORS):
        d(lambda m: m.checksum_mismatch("bad"))
        d(lambda m: m.waited())
    record = d.disk.record
    assert record is not None and record.hold and record.path == "full"
    d(lambda m: m.measured(None))
    assert long(d(lambda m: m.fetched())) == Measure(SHA)
    out = d(lambda m: m.measured(SIZE))
    assert reports(out) == [("downloaded", None)] and d.m.phase is Phase.HELD


def test_a_delta_that_installs_goes_on_to_the_reboot_and_succeeds_on_it() -> None:
    d = Device()
    to_delta_dry_run(d)
    assert d(lambda m: m.dry_run_passed()) == [WriteSlot(DSHA)]
    assert d(lambda m: m.slot_written()) == [Survey()]
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-1", env=INSTALLED_B))
    (saved,) = [a.record for a in out if isinstance(a, SaveRecord)]
    assert saved.state == "rebooting" and saved.target_slot == "B"
    assert saved.path == "delta" and saved.fallback is None and saved.sha256 == DSHA
    assert DeleteArtifact(DSHA) in out and DeleteArtifact(SHA) not in out
    assert long(out) == ReportRebooting("j-1", um.ACK_WAIT)
    assert long(d(lambda m: m.rebooting_reported())) == RequestReboot("j-1")
    d.boot()
    d(lambda m: m.surveyed(running_slot="B", boot_id="boot-2", env=TRYING_B))
    out = d(lambda m: m.surveyed(running_slot="B", boot_id="boot-2", env=CONFIRMED_B))
    assert final(out) == ReportFinal(
        "j-1", ("downloading", "installing", "rebooting", "verifying", "succeeded"), None
    )
    assert d.disk.record is not None and d.disk.record.path == "delta"


def test_a_delta_that_selects_no_slot_fails_without_falling_back() -> None:
    """SWUpdate said it installed: the slot is written, the full .swu would not help."""
    d = Device()
    to_delta_dry_run(d)
    d(lambda m: m.dry_run_passed())
    d(lambda m: m.slot_written())
    out = d(lambda m: m.surveyed(running_slot="A", boot_id="boot-1", env=ENV_A))
    assert final(out).reason == "boot_environment: SWUpdate succeeded but selected no new slot"
    assert d.disk.record is not None and d.disk.record.path == "delta"


# -- any sequence of events ----------------------------------------------------------------


def outcomes(action: Action | None) -> list[Callable[[UpdateMachine], list[Action]]]:
    """The events the I/O layer may feed after `action` (the machine's point of view)."""
    if isinstance(action, Examine):
        return [lambda m: m.examined(FACTS), lambda m: m.examined(FACTS._replace(free_bytes=0))]
    if action is None:  # nothing in flight (idle, held, or the final report out)
        return [
            lambda m: m.received(HOLD),
            lambda m: m.received(job()),
            lambda m: m.received(DELTA),
        ]
    if isinstance(action, Survey):
        return [
            lambda m, s=s, b=b, e=e: m.surveyed(running_slot=s, boot_id=b, env=e)
            for s in ("A", "B", None)
            for b in ("boot-1", "boot-2")
            for e in (ENV_A, INSTALLED_B, CONFIRMED_B, FELL_BACK, None)
        ]
    if isinstance(action, Measure):
        return [
            lambda m: m.measured(None),
            lambda m: m.measured(SIZE // 2),
            lambda m: m.measured(DSIZE),
        ]
    if isinstance(action, Fetch):
        return [
            lambda m: m.fetch_progress(SIZE // 3, SIZE),
            lambda m: m.fetched(),
            lambda m: m.fetch_interrupted("cut"),
            lambda m: m.fetch_failed("403"),
            lambda m: m.checksum_mismatch("bad"),
        ]
    if isinstance(action, DryRun):
        return [lambda m: m.dry_run_passed(), lambda m: m.dry_run_refused("no")]
    if isinstance(action, WriteSlot):
        return [lambda m: m.slot_written(), lambda m: m.install_failed("no")]
    if isinstance(action, ReportRebooting):
        return [lambda m: m.rebooting_reported()]
    if isinstance(action, RequestReboot):
        return [lambda m: m.reboot_requested(), lambda m: m.reboot_request_failed("no")]
    if isinstance(action, Wait):
        return [lambda m: m.waited()]
    return []


STRAY: list[Callable[[UpdateMachine], list[Action]]] = [
    lambda m: m.received(job()),
    lambda m: m.received(HOLD),
    lambda m: m.received(DELTA),
    lambda m: m.received(job(install="cancel")),
    lambda m: m.received(job("j-2")),
    lambda m: m.received(b"[]"),
    lambda m: m.session_up(),
    lambda m: m.final_acked("j-1"),
    lambda m: m.final_acked("j-2"),
    lambda m: m.waited(),
    lambda m: m.fetched(),
    lambda m: m.slot_written(),
    lambda m: m.install_progress(1, 2),
    lambda m: m.measured(1),
]

# the record's state a long action needs on the disk before it starts
NEEDS = {Fetch: "downloading", DryRun: "installing", WriteSlot: "installing"}
NEEDS[RequestReboot] = NEEDS[ReportRebooting] = "rebooting"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_sequence_of_events_keeps_the_rules(data: st.DataObject) -> None:
    d = Device()
    pending: Action | None = None
    finals: set[str] = set()
    for _ in range(60):
        kind = data.draw(st.sampled_from(["outcome", "outcome", "outcome", "stray", "cut"]))
        if kind == "cut":
            out = d.boot()
        else:
            choices = outcomes(pending) if kind == "outcome" else STRAY
            if not choices:
                choices = STRAY
            out = d(data.draw(st.sampled_from(choices)))
        # at most one long action per batch, and it is the last
        assert all(not isinstance(a, um.LONG) for a in out[:-1]), out
        action = long(out)
        if action is not None or kind == "cut":
            pending = action
        for a in out:
            if isinstance(a, ReportFinal):
                finals.add(a.job)
            if isinstance(a, Report) and a.state == "failed":
                assert a.reason  # a failed report always says why
        if action is None:
            continue
        # the record is on the disk, in the right state, before the step starts
        needed = NEEDS.get(type(action))
        if needed is not None:
            record = d.disk.record
            assert record is not None and record.state == needed and record.final is None
            # the artifact in hand (the delta, or the full .swu it fell back to)
            if isinstance(action, Fetch):
                assert action == Fetch(record.url, record.sha256, record.size)
            if isinstance(action, DryRun | WriteSlot):
                assert action.sha256 == record.sha256
            assert (record.full is None) == (record.sha256 == SHA)
            # no step of a job after its end
            assert record.job not in finals
        if isinstance(action, Examine):
            assert d.disk.record is None
