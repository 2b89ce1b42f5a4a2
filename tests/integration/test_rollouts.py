"""Phased rollouts over 20 devices: a release that fails in the first phase never reaches the
second; a good one goes through every phase.

The failures are real: two devices are the real agent on this machine, which refuses the job
before downloading (this host has no /etc/hwrevision). The other devices decide with the agent's
own update machine (`UpdateMachine`) and carry out its actions as the agent's update worker
does: a download from the artifact server with their own certificate and the digest checked,
the protocol's reports; SWUpdate and the reboot are a boot environment in memory here and real
in the boot tier (tests/boot/test_update.py).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_artifacts import make_swu
from twelvefactor_agent.protocol.states import REBOOTING
from twelvefactor_agent.protocol.topics import mgmt_down, mgmt_up
from twelvefactor_agent.update import machine
from twelvefactor_agent.update.decide import report_payload
from twelvefactor_agent.update.download import (
    ChecksumError,
    ClientIdentity,
    DownloadError,
    DownloadInterrupted,
    download,
)
from twelvefactor_agent.update.machine import CANCELLED, UpdateMachine
from twelvefactor_agent.update.steps import Record, other
from twelvefactor_services.management import jobstore
from twelvefactor_services.management.registry import Registry
from twelvefactor_services.management.store import Db

from testbed.hostagent import HostAgent
from testbed.pace import PACE, ROUND_TRIP
from testbed.probe import Probe, ProbeError
from testbed.stack import ServiceProcess, Stack, http_get, wait_until

pytestmark = pytest.mark.integration

DEVICES = [f"dev-{i:02d}" for i in range(1, 21)]
# A rollout over these devices from its start to its end, in three phases: 4.7 s in the
# reference run (testbed/pace.py), polled through the CLI; the phases move on the management
# service's round (PUBLISH_INTERVAL, 1 s), counted in the figure.
ROLLOUT = 4.7
REFUSING = ["dev-01", "dev-03"]  # real agents: two of the first phase's four


class UpdatingDevice:
    """A device whose every decision about a job is the agent's own update machine's.

    `UpdateMachine` (the agent's, unit- and property-tested) decides: whether to take a job,
    a held download-only job waiting for "now", a "cancel", the reports and when a job is
    over. This class carries out its actions as the agent's update worker does, with a real
    download (the device's own certificate, the digest checked) and the protocol's reports
    on the real broker. In place of SWUpdate and the bootloader it keeps the boot
    environment in memory: the install selects the idle slot, the reboot boots it and the
    new slot confirms itself, and the agent starts again on the record it saved (the boot
    tier does these for real: tests/boot/test_update.py)."""

    def __init__(self, stack: Stack, device: str, work: Path) -> None:
        self.device = device
        self.work = work
        ident = stack.device(device)
        self.identity = ClientIdentity(ident.cert, ident.key, ident.ca)
        self.probe = Probe(stack.management_endpoint, ident, f"{device}-mgmt")
        self.probe.connect()
        self.probe.subscribe(mgmt_down(device, "update"))
        self.jobs: list[str] = []  # examined
        self.reports: list[tuple[str, str]] = []
        self.env = {"slot": "A", "upgrade_available": "0"}  # the boot environment
        self.running = "A"
        self.boots = 1
        self.record: Record | None = None  # what the agent saves on /data
        self.handled: list[str] = []
        self._agent_start()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=device, daemon=True)
        self.thread.start()

    def _agent_start(self) -> None:
        """The agent starts: a new machine on the jobs handled and the record saved."""
        self.machine = UpdateMachine(
            device=self.device, uniform=random.uniform, handled=self.handled
        )
        self._drive(lambda m: m.start(self.record))

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                msg = self.probe.wait_for(timeout=0.5)
            except ProbeError:
                continue
            self._take(msg.payload)

    def _take(self, payload: bytes) -> None:
        self._drive(lambda m: m.received(payload))

    def _drive(self, event: Callable[[UpdateMachine], list[machine.Action]]) -> None:
        """Feed `event`, carry out the quick actions and feed back the long one's outcome."""
        actions = event(self.machine)
        while actions:
            *quick, last = actions
            for action in quick:
                self._quick(action)
            if not isinstance(last, machine.LONG):
                self._quick(last)
                return
            if isinstance(last, machine.RequestReboot):
                self._reboot()
                return
            actions = self._perform(last)(self.machine)

    def _quick(self, action: machine.Action) -> None:
        if isinstance(action, machine.SaveRecord):
            self.record = action.record
        elif isinstance(action, machine.DeleteRecord):
            self.record = None
        elif isinstance(action, machine.Remember):
            self.handled = list(action.jobs)
        elif isinstance(action, machine.DeleteArtifact):
            self._artifact(action.sha256).unlink(missing_ok=True)
        elif isinstance(action, machine.Report):
            self._report(action.job, action.state, action.percent, action.reason)
        elif isinstance(action, machine.ReportFinal):
            *after, state = action.chain
            self._report(action.job, state, None, action.reason, after)
            self._drive(lambda m: m.final_acked(action.job))  # the probe waited for the ack
        else:
            assert isinstance(action, machine.Log), action

    def _perform(self, action: machine.Action) -> Callable[[UpdateMachine], list[machine.Action]]:
        """Carry out a long action; the event that says how it went."""
        if isinstance(action, machine.Examine):
            self.jobs.append(action.job.job)
            partial = self._artifact(action.job.sha256)
            facts = machine.Facts(
                hwrevision="qemux86-64 1.0",
                os_version="1.0",
                free_bytes=1 << 34,
                partial_bytes=partial.stat().st_size if partial.exists() else 0,
                running_slot=self.running,
            )
            return lambda m: m.examined(facts)
        if isinstance(action, machine.Survey):
            slot, boot, env = self.running, f"boot-{self.boots}", dict(self.env)
            return lambda m: m.surveyed(running_slot=slot, boot_id=boot, env=env)
        if isinstance(action, machine.Measure):
            path = self._artifact(action.sha256)
            size = path.stat().st_size if path.exists() else None
            return lambda m: m.measured(size)
        if isinstance(action, machine.Fetch):
            return self._fetch(action)
        if isinstance(action, machine.DryRun):
            return lambda m: m.dry_run_passed()
        if isinstance(action, machine.WriteSlot):  # SWUpdate selects the idle slot, last of all
            self.env = {"slot": other(self.running), "upgrade_available": "1"}
            return lambda m: m.slot_written()
        if isinstance(action, machine.ReportRebooting):
            self._report(action.job, REBOOTING, None, None)
            return lambda m: m.rebooting_reported()
        assert isinstance(action, machine.Wait), action
        time.sleep(action.seconds)
        return lambda m: m.waited()

    def _reboot(self) -> None:
        """The device boots the selected slot, which confirms itself; the agent starts again."""
        self.running = self.env["slot"]
        self.boots += 1
        self.env["upgrade_available"] = "0"  # twelvefactor-confirm, on a healthy boot
        self._agent_start()

    def _fetch(self, action: machine.Fetch) -> Callable[[UpdateMachine], list[machine.Action]]:
        """One download attempt, its outcome as the worker tells the machine."""
        try:
            download(
                action.url,
                self._artifact(action.sha256),
                sha256=action.sha256,
                size=action.size,
                identity=self.identity,
                progress=lambda done, total: self._drive(lambda m: m.fetch_progress(done, total)),
            )
        except ChecksumError as exc:
            error = str(exc)
            return lambda m: m.checksum_mismatch(error)
        except DownloadInterrupted as exc:
            error = str(exc)
            return lambda m: m.fetch_interrupted(error)
        except DownloadError as exc:
            error = str(exc)
            return lambda m: m.fetch_failed(error)
        return lambda m: m.fetched()

    def _artifact(self, sha256: str) -> Path:
        return self.work / f"{sha256}.swu"

    def _report(
        self,
        job: str,
        state: str,
        percent: int | None,
        reason: str | None,
        after: Sequence[str] = (),
    ) -> None:
        self.reports.append((job, state))
        payload = report_payload(
            job, state, ts=time.time(), percent=percent, reason=reason, after=after
        )
        self.probe.publish(mgmt_up(self.device, "update"), payload)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(PACE.limit(ROUND_TRIP))
        self.probe.disconnect()


@pytest.fixture
def fleet(
    stack: Stack, management: ServiceProcess, tmp_path: Path
) -> Iterator[dict[str, UpdatingDevice | HostAgent]]:
    made: dict[str, UpdatingDevice | HostAgent] = {}
    try:
        for device in DEVICES:
            if device in REFUSING:
                agent = HostAgent(stack, device, tmp_path / device)
                agent.start()
                made[device] = agent
            else:
                (tmp_path / device).mkdir()
                made[device] = UpdatingDevice(stack, device, tmp_path / device)
        yield made
    finally:
        for d in made.values():
            d.close()


def run_cli(
    stack: Stack, management: ServiceProcess, *args: str
) -> subprocess.CompletedProcess[str]:
    api = stack.api_options(management)
    return PACE.run([sys.executable, "-m", "twelvefactor_services.management.cli", *args, *api])


def cli(stack: Stack, management: ServiceProcess, *args: str) -> str:
    done = run_cli(stack, management, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def rollout(stack: Stack, management: ServiceProcess, rid: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cli(stack, management, "rollout", "show", rid, "--json"))
    return found


def wait_rollout(
    stack: Stack,
    management: ServiceProcess,
    rid: str,
    cond: Callable[[dict[str, Any]], bool],
    what: str,
    fixed: float = 0.0,
) -> dict[str, Any]:
    """The rollout once ``cond`` holds; ``fixed``: seconds of the rollout's own timers
    (a start or install time) that no machine's speed changes."""
    return wait_until(
        lambda: r if cond(r := rollout(stack, management, rid)) else None,
        PACE.limit(ROLLOUT, fixed=fixed),
        what,
    )


def add_artifact(
    stack: Stack, management: ServiceProcess, swu: Path, version: str = "2.0"
) -> dict[str, Any]:
    """A new .swu of ``version`` made at ``swu`` and added through the CLI: the artifact."""
    made = make_swu(swu, version)
    added: dict[str, Any] = json.loads(
        cli(stack, management, "artifact", "add", "--json", str(made))
    )
    return added


def good_group_rollout(
    stack: Stack, management: ServiceProcess, swu: Path, group: str, *extra: str
) -> str:
    """A new artifact rolled out to a group of the 18 good devices in phases of 2, 50 %
    and the rest, with ``extra`` options; the rollout's id."""
    good = [d for d in DEVICES if d not in REFUSING]
    added = add_artifact(stack, management, swu)
    cli(stack, management, "config", "group", "set", group, "--set-json", "{}")
    cli(stack, management, "config", "group", "add", group, *good)
    made = cli(
        stack, management, "rollout", "create", "--artifact", added["sha256"][:8],
        "--group", group, "--phase", "2", "--phase", "50%", "--phase", "100%", "--json", *extra,
    )  # fmt: skip
    return str(json.loads(made)["id"])


def wait_all(
    stack: Stack, management: ServiceProcess, rid: str, state: str, what: str
) -> dict[str, Any]:
    """The rollout once every one of its devices is in ``state``."""
    return wait_rollout(
        stack, management, rid, lambda r: all(d["state"] == state for d in r["devices"]), what
    )


def test_a_release_that_fails_in_the_first_phase_never_reaches_the_second(
    stack: Stack,
    management: ServiceProcess,
    fleet: dict[str, Any],
    tmp_path: Path,
) -> None:
    added = add_artifact(stack, management, tmp_path / "a.swu")
    made = cli(
        stack, management, "rollout", "create", "--artifact", added["sha256"][:8],
        "--devices", ",".join(DEVICES), "--phase", "4", "--phase", "50%", "--phase", "100%",
        "--success", "50", "--error", "25", "--error-min", "4", "--json",
    )  # fmt: skip
    rid = json.loads(made)["id"]
    r = wait_rollout(stack, management, rid, lambda r: r["state"] == "paused", "the pause")
    assert r["reason"] == "error threshold 25% reached (2 of 4)"
    by_device = {d["device"]: d for d in r["devices"]}
    assert {d for d, v in by_device.items() if v["state"] == "failed"} == set(REFUSING)
    assert all(by_device[d]["reason"].startswith("no_hwrevision: ") for d in REFUSING)
    assert {d for d, v in by_device.items() if v["state"] == "succeeded"} == {"dev-02", "dev-04"}
    # nobody in the later phases was sent anything
    assert all(v["job"] is None and v["state"] == "waiting" for v in r["devices"][4:])
    assert [p["size"] for p in r["phase_progress"]] == [4, 10, 6]
    shown = cli(stack, management, "rollout", "show", rid[:5])
    assert "paused: error threshold 25% reached (2 of 4)" in shown
    assert "dev-01 (phase 1) failed: no_hwrevision" in shown
    # still paused a while later: the pause holds
    assert rollout(stack, management, rid)["phase"] == 1

    # the operator accepts those two and resumes: the rest goes through every phase
    cli(stack, management, "rollout", "resume", rid)
    r = wait_rollout(stack, management, rid, lambda r: r["state"] == "finished", "the end")
    assert r["reason"] == "18 succeeded, 2 failed or rolled back"
    assert [e["state"] for e in r["events"]] == [
        "scheduled", "running", "paused", "running", "running", "running", "finished",
    ]  # fmt: skip
    assert all(fleet[d].jobs for d in DEVICES if d not in REFUSING)
    listed = cli(stack, management, "rollout", "list")
    assert rid in listed and "finished" in listed and "18/20" in listed


def test_a_good_release_goes_through_every_phase_and_a_cancel_stops_the_next(
    stack: Stack,
    management: ServiceProcess,
    fleet: dict[str, Any],
    tmp_path: Path,
) -> None:
    rid = good_group_rollout(stack, management, tmp_path / "g.swu", "field", "--error", "10")
    r = wait_rollout(stack, management, rid, lambda r: r["state"] == "finished", "the end")
    assert [p["size"] for p in r["phase_progress"]] == [2, 9, 7]
    assert [p.get("succeeded") for p in r["phase_progress"]] == [2, 9, 7]
    assert r["reason"] == "18 succeeded, 0 failed or rolled back"

    # a second release, cancelled while it waits for its start time, sends nothing
    second = add_artifact(stack, management, tmp_path / "h.swu", "2.1")
    made = cli(
        stack, management, "rollout", "create", "--artifact", second["sha256"][:8],
        "--group", "field", "--start", "2099-01-01T00:00", "--json",
    )  # fmt: skip
    later = json.loads(made)["id"]
    assert rollout(stack, management, later)["state"] == "scheduled"
    cli(stack, management, "rollout", "cancel", later)
    r = rollout(stack, management, later)
    assert r["state"] == "cancelled" and r["reason"].startswith("cancelled by admin")
    assert all(d["job"] is None for d in r["devices"])
    done = run_cli(stack, management, "rollout", "resume", later)
    assert done.returncode == 1 and f"rollout {later} has ended (cancelled)" in done.stderr


def test_a_rollout_by_tags_takes_the_enrolled_devices_with_all_of_them(
    stack: Stack, management: ServiceProcess, tmp_path: Path
) -> None:
    reg = Registry(Db(stack.registry_db))
    try:
        for i, tags in enumerate([["bench", "site:b"], ["bench"], ["bench", "site:b"], ["site:b"]]):
            reg.enrol(
                f"tag-{i}", hardware=None, group=None, tags=tags, certificate_serial=i + 1, now=1.0
            )
        reg.retire("tag-2", 2.0, None)  # decommissioned: never in a rollout again
    finally:
        reg.db.close()
    added = add_artifact(stack, management, tmp_path / "t.swu")
    made = cli(
        stack, management, "rollout", "create", "--artifact", added["sha256"][:8],
        "--tags", "bench,site:b", "--json",
    )  # fmt: skip
    r = json.loads(made)
    assert r["tags"] == ["bench", "site:b"] and [d["device"] for d in r["devices"]] == ["tag-0"]
    done = run_cli(
        stack, management, "rollout", "create", "--artifact", added["sha256"][:8],
        "--devices", "tag-1,tag-2",
    )  # fmt: skip
    assert done.returncode == 1 and "decommissioned: tag-2" in done.stderr
    # a list is put in phases in sorted order, whatever order it was given in
    made = cli(
        stack, management, "rollout", "create", "--artifact", added["sha256"][:8],
        "--devices", "tag-3,tag-1", "--phase", "1", "--phase", "100%", "--json",
    )  # fmt: skip
    assert [(d["device"], d["phase"]) for d in json.loads(made)["devices"]] == [
        ("tag-1", 1),
        ("tag-3", 2),
    ]


def test_a_download_only_rollout_downloads_everywhere_then_installs_phase_by_phase_on_the_go(
    stack: Stack,
    management: ServiceProcess,
    fleet: dict[str, Any],
    tmp_path: Path,
) -> None:
    good = [d for d in DEVICES if d not in REFUSING]
    rid = good_group_rollout(stack, management, tmp_path / "d.swu", "night", "--download-only")
    # every phase downloads at once, and nobody installs before the go
    r = wait_all(stack, management, rid, "downloaded", "every device holding its download")
    assert r["state"] == "running" and r["go"] is None and r["phase"] == 1
    assert r["events"][-1]["reason"] == (
        "downloads started: 18 device(s) in 3 phase(s); the installs wait for the go"
    )
    assert not any(s in ("installing", "succeeded") for d in good for _, s in fleet[d].reports)
    shown = cli(stack, management, "rollout", "show", rid)
    assert f"download only: installs on the go (`rollout install {rid}`)" in shown
    assert "  phase 2  [--------------------]  9 device(s): 9 downloaded" in shown

    cli(stack, management, "rollout", "install", rid[:6])
    r = wait_rollout(stack, management, rid, lambda r: r["state"] == "finished", "the end")
    assert r["reason"] == "18 succeeded, 0 failed or rolled back"
    reasons = [e["reason"] for e in r["events"]]
    assert "install started by admin: phase 1, 2 device(s)" in reasons
    # phase 2 began only once phase 1 had installed
    first, second = r["devices"][0]["device"], r["devices"][2]["device"]
    assert fleet[first].reports[-1][1] == "succeeded"
    assert [s for _, s in fleet[second].reports].index("downloaded") < [
        s for _, s in fleet[second].reports
    ].index("installing")
    done = run_cli(stack, management, "rollout", "install", rid)
    assert done.returncode == 1 and f"rollout {rid} has ended (finished)" in done.stderr


def test_a_held_job_installs_at_its_time_and_a_cancelled_hold_ends_failed(
    stack: Stack,
    management: ServiceProcess,
    fleet: dict[str, Any],
    tmp_path: Path,
) -> None:
    added = add_artifact(stack, management, tmp_path / "e.swu")
    sha = added["sha256"][:8]
    # a job for one device, to install a few seconds from now: it holds, then goes by itself
    at = dt.datetime.now().astimezone() + dt.timedelta(seconds=6)
    args = ["job", "create", "--artifact", sha, "--device", "dev-02", "--json"]
    made = json.loads(cli(stack, management, *args, "--install-at", at.isoformat("T", "seconds")))
    assert made["install_at"] is not None and made["devices"][0]["install"] == "hold"
    job = made["id"]
    wait_until(
        lambda: (
            json.loads(cli(stack, management, "job", "show", job, "--json"))["devices"][0]["state"]
            == "succeeded"
        ),
        timeout=PACE.limit(ROLLOUT, fixed=6),  # the install time, 6 s from now
        what="the held job installed at its time",
    )
    states = [s for j, s in fleet["dev-02"].reports if j == job]
    assert states.index("downloaded") < states.index("installing")

    # a download-only rollout cancelled while held: the devices drop the file, end failed
    made = cli(
        stack, management, "rollout", "create", "--artifact", sha,
        "--devices", "dev-04,dev-05", "--download-only", "--json",
    )  # fmt: skip
    rid = json.loads(made)["id"]
    wait_all(stack, management, rid, "downloaded", "both holding")
    cli(stack, management, "rollout", "cancel", rid)
    r = wait_all(stack, management, rid, "failed", "both cancelled")
    assert r["state"] == "cancelled" and r["reason"].endswith("2 held download(s) cancelled")
    assert all(d["reason"] == CANCELLED for d in r["devices"])
    # a job that is not download-only has nothing to release
    made = json.loads(
        cli(stack, management, "job", "create", "--artifact", sha, "--device", "dev-06", "--json")
    )
    done = run_cli(stack, management, "job", "install", made["id"])
    assert done.returncode == 1 and "has no device waiting for its install" in done.stderr


QUIET = 3.0  # the management service's --job-quiet-after here (600 s by default)


def test_a_final_report_lost_on_the_way_arrives_when_the_quiet_job_is_offered_again(
    stack: Stack, tmp_path: Path
) -> None:
    """The real agent finishes a job while no management service is subscribed (a copy
    killed with the report in flight, a broker restart: the broker drops it, and the agent
    forgets a final report once the broker has it). The service offers the quiet job
    again and the agent answers with its final report again; then the retained job is
    cleared, so a reconnect brings nothing (docs/protocol.md, "Updates")."""
    management = stack.management(job_quiet_after=QUIET)
    management.start(PACE.steps_of("services"))
    device = "dev-lost"
    agent = HostAgent(stack, device, tmp_path / device)
    try:
        agent.start()

        def online() -> bool:
            status, body = http_get(management, f"/devices/{device}")
            return status == 200 and body["presence"] == "online"

        wait_until(online, what=f"{device} online")
        added = add_artifact(stack, management, tmp_path / "a.swu")
        agent.stop()  # away while the job is made and published
        made = cli(
            stack, management, "job", "create", "--json",
            "--artifact", added["sha256"][:12], "--device", device,
        )  # fmt: skip
        job = json.loads(made)["id"]
        wait_until(
            lambda: f"published update job {job} for {device}" in management.log_file.read_text(),
            what="the job published",
        )
        management.stop()  # nobody subscribed to the devices' reports now
        agent.start()  # takes the retained job: refused here (no /etc/hwrevision), reported
        done = f"update job {job} refused: no_hwrevision"
        wait_until(lambda: done in agent.log_file.read_text(), what="the agent's refusal")
        # the report was lost: the registry (read while no service runs) has the job queued
        db = Db(stack.registry_db, migrate=False)
        try:
            stored = jobstore.get_job(db, job)
        finally:
            db.close()
        assert stored is not None and stored["devices"][0]["state"] == "queued", stored
        management.start(PACE.steps_of("services"))

        def state() -> dict[str, Any]:
            shown: dict[str, Any] = json.loads(cli(stack, management, "job", "show", job, "--json"))
            return shown["devices"][0]

        ended = wait_until(
            lambda: s if (s := state())["state"] == "failed" else None,
            PACE.limit(ROUND_TRIP, fixed=QUIET + 2),
            "the final report, again",
        )
        assert str(ended["reason"]).startswith("no_hwrevision: "), ended
        log = management.log_file.read_text()
        assert f"job {job}: nothing from {device} for a while, offered again" in log
        again = f"update job {job} already handled: reporting failed again"
        assert again in agent.log_file.read_text()
        wait_until(
            lambda: f"cleared update job {job} for {device}" in management.log_file.read_text(),
            what="the retained job cleared",
        )
        # a restarted agent is offered nothing: no report of the job again (before, the
        # agent may have answered the job twice: its session's queued copy and the
        # retained one its subscription brings, both while no service listened)
        answered = agent.log_file.read_text().count(again)
        agent.stop()
        agent.start()
        wait_until(online, what=f"{device} back")
        time.sleep(PACE.limit(ROUND_TRIP, fixed=QUIET + 2))  # two rounds of offers' time
        assert agent.log_file.read_text().count(again) == answered
        assert state()["state"] == "failed"
    finally:
        agent.close()
        management.stop()


def test_two_copies_one_killed_in_the_middle_finish_the_rollout_once(
    database: str, tmp_path: Path, run_stack: Callable[[Stack], Stack]
) -> None:
    """Issue 15, item 2: two management copies on one database (SQLite, PostgreSQL) and
    one artifact address; the copy the operator used is killed with SIGKILL while the
    second phase runs. The other copy finishes the rollout: each phase started once,
    each device given one job, every job succeeded (a report lost with the killed copy
    comes back when the quiet job is offered again)."""
    stack = run_stack(Stack(tmp_path / "stack", management_database=database))
    copies = [stack.management(job_quiet_after=QUIET) for _ in range(2)]
    for copy in copies:
        copy.start(PACE.steps_of("services"))
    fleet: dict[str, UpdatingDevice] = {}
    try:
        for device in DEVICES:
            (tmp_path / device).mkdir()
            fleet[device] = UpdatingDevice(stack, device, tmp_path / device)
            online = {"v": 1, "online": True, "ts": time.time()}  # offers go to online devices
            fleet[device].probe.publish(mgmt_up(device, "online"), json.dumps(online).encode())
        added = add_artifact(stack, copies[0], tmp_path / "k.swu")
        made = cli(
            stack, copies[0], "rollout", "create", "--artifact", added["sha256"][:8],
            "--devices", ",".join(DEVICES), "--phase", "2", "--phase", "50%", "--phase", "100%",
            "--json",
        )  # fmt: skip
        rid = json.loads(made)["id"]
        wait_rollout(stack, copies[0], rid, lambda r: r["phase"] >= 2, "the second phase")
        copies[0].kill()
        r = wait_rollout(
            stack, copies[1], rid, lambda r: r["state"] == "finished", "the end", fixed=2 * QUIET
        )
    finally:
        for d in fleet.values():
            d.close()
    assert r["reason"] == "20 succeeded, 0 failed or rolled back"
    assert [e["state"] for e in r["events"]] == [
        "scheduled", "running", "running", "running", "finished",
    ]  # fmt: skip
    db = Db(stack.registry_db, migrate=False)
    try:
        targets = [row[0] for row in db.execute("SELECT target FROM update_jobs ORDER BY target")]
        per_device = db.execute(
            "SELECT device, COUNT(*) AS jobs FROM device_jobs GROUP BY device"
        ).fetchall()
    finally:
        db.close()
    assert targets == [f"rollout:{rid}:{phase}" for phase in (1, 2, 3)]
    assert {row["device"]: row["jobs"] for row in per_device} == dict.fromkeys(DEVICES, 1)
