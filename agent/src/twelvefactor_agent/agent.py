"""The agent process: queue, local API, both sessions, managed configuration, systemd.

Threads: one per MQTT session, one for the local API. The main thread waits
for events (a signal, a desired configuration, a session coming up), carries
out what the configuration machine (config/reconfig.py) decides, restarting both
sessions on a new configuration, and pets the systemd watchdog, but only
while every worker thread is alive and has been through its loop recently, so
a wedged thread gets the agent restarted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

from twelvefactor_agent import __version__
from twelvefactor_agent.config.managedfile import ManagedFile
from twelvefactor_agent.config.reconfig import (
    Action,
    ApplyLive,
    ConfigMachine,
    Ignore,
    Publish,
    Restart,
    Save,
)
from twelvefactor_agent.config.settings import ALWAYS_ON, METERED, Config
from twelvefactor_agent.forward.queue import Queue, QueueUnavailable, open_queues
from twelvefactor_agent.localapi.calltable import CallEvent
from twelvefactor_agent.localapi.server import ApiServer, bind_socket
from twelvefactor_agent.protocol.envelope import dumps
from twelvefactor_agent.session.checkin import CheckinMachine, Progress, Step, Wake
from twelvefactor_agent.session.management import ManagementSession
from twelvefactor_agent.session.mqtt import LastError, MqttSession
from twelvefactor_agent.session.solution import SolutionSession
from twelvefactor_agent.session.statefile import StateFile
from twelvefactor_agent.update.decide import Policy
from twelvefactor_agent.update.worker import Paths, Updater
from twelvefactor_agent.util import sdnotify
from twelvefactor_agent.util.atomicfile import write_atomic

log = logging.getLogger("twelvefactor.agent")

# A worker that has not been round its loop for this long counts as stuck.
# Its loop wakes every second; a blocking connect or SQLite's busy wait take
# at most tens of seconds.
STUCK_AFTER = 45.0
STOP_GRACE = 10.0
TICK = 1.0


class Agent:
    def __init__(self, config: Config, base_doc: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.last_error = LastError()
        self.stop_event = threading.Event()
        self.state = StateFile(config.agent.state_file)
        # The provisioned document managed overlays go on; without it, a document
        # rebuilt from `config` (same values) stands in.
        self.base_doc = base_doc if base_doc is not None else _document(config)
        # put() is reentrant (safe from the signal handler).
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.generation = 0
        self.mgmt: ManagementSession | None = None
        self.sol: SolutionSession | None = None
        self.queues: list[Queue] = []
        self.api: ApiServer | None = None
        self.updater: Updater | None = None
        # The metered profile's schedule (session/checkin.py); None: always on.
        self.link: CheckinMachine | None = None
        # What the root helper twelvefactor-link was last told (its file in the run
        # directory): it sets the tunnel's keepalive and time sync to match.
        self.link_file = config.agent.state_file.parent / "link"
        self.link_request = self.link_file.with_name("link-request")
        self.link_told: str | None = None
        # What status shows: taken after the actions of a decision are carried out
        # (a trial shows once it is on disk and the sessions restarted).
        self.config_status: dict[str, Any] = {}

    # -- callbacks from the session threads ------------------------------------------

    def _state_callback(self, generation: int) -> Any:
        def on_state(session: str, online: bool) -> None:
            if generation != self.generation:
                return  # a session that is being replaced
            try:
                if self.state.set(session, online):
                    log.info("%s session %s", session, "online" if online else "offline")
            except OSError as exc:
                log.error("cannot write %s: %s", self.state.path, exc)
            if online:
                self.events.put(("up", session, generation))

        return on_state

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.stop_event.set()
        self.events.put(("stop",))

    # -- run ---------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        base = self.config
        log.info("twelvefactor-agent %s for device %s", __version__, base.device.id)
        try:
            base.agent.data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            log.error("cannot create %s: %s", base.agent.data_dir, exc)
            return 1
        self.managed = ManagedFile(base.agent.data_dir)
        self.machine = ConfigMachine(
            self.base_doc, self.managed.load(), float(base.agent.confirm_window)
        )
        first = self.machine.start(time.monotonic())
        cfg = self.machine.config
        # what the local API's status shows until the first actions are carried out
        self.config_status = self.machine.status()
        if self.machine.version is not None:
            log.info("managed configuration version %d in force", self.machine.version)
        try:
            # the local API's (durable), then the solution and management threads'
            opened = open_queues(cfg.agent.data_dir / "queue.db", cfg.queue, 3, time.time())
        except (OSError, QueueUnavailable) as exc:  # not even in memory
            log.error("cannot open a queue, even in memory: %s", exc)
            return 1
        self.queues = opened.queues
        api_queue = self.queues[0]
        if opened.fault is not None:
            log.error("%s", opened.fault)
            self.last_error.set(opened.fault)
        stats = api_queue.stats()
        log.info(
            "queue: %d messages pending (%d bytes), %d dropped so far",
            stats.depth,
            stats.bytes,
            stats.dropped,
        )
        try:
            cfg.agent.state_file.parent.mkdir(parents=True, exist_ok=True)
            self.state.write()
            listener = bind_socket(cfg.agent.socket, cfg.agent.socket_group)
        except OSError as exc:
            log.error("cannot set up %s: %s", cfg.agent.socket, exc.strerror or exc)
            return 1

        api = ApiServer(
            listener,
            api_queue,
            self._status,
            on_commit=lambda: self.sol.wake() if self.sol is not None else None,
            submit_call=self._submit_call,
            checkin=lambda: self.events.put(("checkin",)),
        )
        api.last_error = self.last_error.set
        if not opened.durable:
            api.refuse_publish = opened.fault
        self.api = api
        api.start()
        self.updater = Updater(
            device=cfg.device.id,
            identity=(cfg.device.certificate, cfg.device.key, cfg.device.ca),
            paths=Paths(cfg.agent.data_dir, cfg.agent.state_file.parent),
            publish=self._publish_update,
            policy=Policy(allow_downgrade=cfg.update.allow_downgrade),
        )
        self.updater.start()
        self._carry_out(first)
        sdnotify.notify(f"READY=1\nSTATUS=serving {cfg.agent.socket}\nMAINPID={os.getpid()}")
        log.info("local API on %s", cfg.agent.socket)

        rc = self._serve()

        sdnotify.notify("STOPPING=1")
        self.updater.stop()
        self._stop_sessions("shutdown")
        api.stop()
        api.join(STOP_GRACE)
        listener.close()
        with contextlib.suppress(OSError):
            cfg.agent.socket.unlink()
        self.generation += 1
        for name in ("management", "solution"):
            self.state.set(name, False)  # also covers a thread that did not stop in time
        for q in self.queues:
            q.close()
        log.info("stopped")
        return rc

    def _status(self) -> dict[str, object]:
        mgmt, sol = self.mgmt, self.sol
        return {
            "device": self.config.device.id,
            "management": "online" if mgmt is not None and mgmt.online else "offline",
            "solution": "online" if sol is not None and sol.online else "offline",
            "queue": self.queues[0].stats().as_json(),
            "config": self.config_status,
            "link": self._link_status(),
        }

    def _link_status(self) -> dict[str, object]:
        """The profile; metered: checking in now, or asleep until when (wall clock)."""
        link = self.link
        if link is None:
            return {"profile": ALWAYS_ON}
        due = link.due
        return {
            "profile": METERED,
            "awake": link.awake,
            "next_checkin": None if due is None else time.time() + (due - time.monotonic()),
        }

    def _publish_update(self, payload: bytes, acked: threading.Event | None) -> bool:
        mgmt = self.mgmt
        return mgmt is not None and mgmt.publish_update(payload, acked)

    def _submit_call(self, call_id: bytes, request: bytes, timeout: float) -> int | None:
        """Hand a proxy call to the solution session: its route, or None if it is offline."""
        sol = self.sol
        return None if sol is None else sol.send_call(call_id, request, timeout)

    # -- the main loop -------------------------------------------------------------

    def _serve(self) -> int:
        interval = sdnotify.watchdog_interval()
        next_ping = 0.0
        while not self.stop_event.is_set():
            now = time.monotonic()
            link = self.link
            wakes = [self.machine.next_wakeup(), None if link is None else link.next_wakeup()]
            wake = min((w for w in wakes if w is not None), default=None)
            timeout = TICK if wake is None else min(TICK, max(0.0, wake - now))
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                event = None
            if self.stop_event.is_set():
                break
            now = time.monotonic()
            actions: list[Action] = []
            if event is not None and event[0] == "desired":
                actions += self.machine.desired(event[1], now)
            elif event is not None and event[0] == "up":
                actions += self.machine.session_up(event[1], event[2], now)
            actions += self.machine.poll(now)
            self._carry_out(actions)
            if self.link is not None:
                steps = self.link.request(now) if event == ("checkin",) else []
                progress = self._progress()
                opened = self.link.awake and self.mgmt is not None
                if opened and self.sol is None and progress.queue_bytes > 0:
                    self._start_solution(self.config)  # data to send after all: open it now
                self._check_in(steps + self.link.poll(now, progress), progress, now)
            self._tell_link()
            workers: list[ApiServer | MqttSession] = [
                w for w in (self.api, self.mgmt, self.sol) if w is not None
            ]
            # The update worker counts only if it died: a long SWUpdate run is not stuck.
            if self.updater is not None and not self.updater.is_alive():
                log.error(
                    "update thread ended: %s; exiting so systemd restarts the agent",
                    self.updater.error,
                )
                return 1
            for worker in workers:
                if not worker.is_alive():
                    log.error(
                        "%s thread ended: %s; exiting so systemd restarts the agent",
                        worker.name,
                        worker.error,
                    )
                    return 1
            stuck = [w.name for w in workers if now - w.heartbeat > STUCK_AFTER]
            if stuck:
                log.warning("threads not making progress: %s", ", ".join(stuck))
            elif interval and now >= next_ping:
                sdnotify.notify("WATCHDOG=1")
                next_ping = now + interval
        return 0

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Save):
                try:
                    self.managed.save(action.stored)
                except OSError as exc:
                    log.error("cannot write %s: %s", self.managed.path, exc)
                    self.last_error.set(f"config: cannot write {self.managed.path}: {exc}")
            elif isinstance(action, Restart):
                self._apply_settings(action.config)
                self._set_profile(action.config)
                if self.link is not None and not self.link.awake:
                    self.link.request(time.monotonic())  # a trial reverted while asleep
                self._restart_sessions(action.config, action.generation)
            elif isinstance(action, ApplyLive):
                self._apply_settings(action.config)
                log.info("managed configuration version %s in force", self.machine.version)
            elif isinstance(action, Publish):
                r = action.report
                text = f"configuration version {r.version} {r.status}"
                if r.error:
                    log.warning("%s: %s", text, r.error)
                else:
                    log.info("%s", text)
                if self.mgmt is not None:
                    self.mgmt.publish_report()
            elif isinstance(action, Ignore):
                log.info("%s", action.reason)
        self.config_status = self.machine.status()

    def _set_profile(self, config: Config) -> None:
        """Metered or always on, as `config` says; a new schedule starts with a check-in
        (the sessions are starting anyway)."""
        if config.link.profile != METERED:
            if self.link is not None:
                log.info("link: always on")
            self.link = None
        elif self.link is None or self.link.settings != config.link:
            self.link = CheckinMachine(config.link)
            self.link.start(time.monotonic())
            log.info(
                "link: metered, a check-in every %d s (at most %d s each)",
                config.link.checkin_interval,
                config.link.checkin_max,
            )

    def _tell_link(self) -> None:
        """The link's state to the update worker (downloads only while the link may be
        used) and to twelvefactor-link (the tunnel's keepalive, time sync)."""
        link = self.link
        if self.updater is not None:
            self.updater.set_link(link is None or link.awake)
        word = ALWAYS_ON if link is None else ("awake" if link.awake else "asleep")
        if word == self.link_told:
            return
        try:
            write_atomic(self.link_file, f"{word}\n".encode(), 0o644)
            # the helper's path unit waits for this file (a level: no change is missed)
            write_atomic(self.link_request, b"", 0o644)
        except OSError as exc:
            log.error("cannot write %s: %s", self.link_file, exc)
            self.last_error.set(f"link: cannot write {self.link_file}: {exc}")
        self.link_told = word  # tried once per change: the next change tries again

    def _progress(self) -> Progress:
        """How far the current check-in is (or what may call for an early one)."""
        mgmt, sol = self.mgmt, self.sol
        try:
            stats = self.queues[0].stats()
            queue_bytes = stats.bytes
            oldest = None if stats.oldest_ts is None else time.time() - stats.oldest_ts
        except QueueUnavailable:
            queue_bytes, oldest = 1, None  # unknown: not settled, no early trigger
        updater = self.updater
        record = updater.record if updater is not None else None
        held = record is not None and record.hold and record.final is None
        # a job or its refusal still on its way counts: the session closing would lose it
        in_flight = (updater is not None and updater.has_mail) or (
            mgmt is not None and mgmt.updates_pending
        )
        # so does an event not yet handled: the retained configuration comes before the
        # greeting's acknowledgement but is applied (and reported) one loop turn later
        in_flight = in_flight or not self.events.empty()
        return Progress(
            # a check-in with nothing to send opens no solution session
            sessions_up=mgmt is not None and mgmt.online and (sol is None or sol.online),
            greeted=mgmt is not None and mgmt.greeted,
            queue_bytes=queue_bytes,
            oldest_age=oldest,
            busy=self.machine.stored.trial is not None
            or (record is not None and not held)
            or in_flight,
        )

    def _check_in(self, steps: list[Step], progress: Progress, now: float) -> None:
        for step in steps:
            if isinstance(step, Wake):
                log.info("link: checking in (%s)", step.reason)
                if self.mgmt is None:
                    self._restart_sessions(
                        self.config, self.machine.generation, solution=progress.queue_bytes > 0
                    )
            else:
                assert self.link is not None
                back_by = time.time() + (step.due - now) + self.link.settings.checkin_max
                log.info(
                    "link: %s; asleep, next check-in in %.0f s",
                    "check-in done" if step.settled else "check-in not finished in time",
                    step.due - now,
                )
                if self.mgmt is not None:
                    self.mgmt.next_checkin = back_by
                self._stop_sessions("asleep")

    def _apply_settings(self, config: Config) -> None:
        """Settings that change without restarting anything: the queue's bounds."""
        self.config = config
        for q in self.queues:
            q.settings = config.queue
        if self.api is not None:
            self.api.max_message_bytes = config.queue.max_message_bytes

    def _report(self) -> bytes | None:
        report = self.machine.stored.report
        return None if report is None else dumps(report.as_json())

    def _restart_sessions(self, config: Config, generation: int, *, solution: bool = True) -> None:
        """Both sessions on `config`; without the solution session if `solution` is False
        (a metered check-in with nothing to send: `_start_solution` adds it when needed)."""
        had_sessions = self.mgmt is not None
        self._stop_sessions("reconfigure")
        self.generation = generation
        if had_sessions:
            log.info(
                "sessions restart on management %s:%d, solution %s:%d",
                config.management.host,
                config.management.port,
                config.solution.host,
                config.solution.port,
            )
        self.mgmt = ManagementSession(
            config,
            self.queues[2],
            self._state_callback(generation),
            self.last_error,
            on_desired=lambda raw: self.events.put(("desired", raw)),
            report=self._report,
            on_update=self.updater.offer if self.updater is not None else lambda raw: None,
            on_connected=self.updater.session_up if self.updater is not None else lambda: None,
        )
        self.mgmt.start()
        if solution:
            self._start_solution(config)

    def _start_solution(self, config: Config) -> None:
        self.sol = SolutionSession(
            config,
            self.queues[1],
            self._state_callback(self.generation),
            self.last_error,
            report_call=self._report_call,
        )
        self.sol.start()

    def _report_call(self, event: CallEvent) -> None:
        if self.api is not None:
            self.api.report_call(event)

    def _stop_sessions(self, reason: str) -> None:
        sessions: list[MqttSession] = [s for s in (self.mgmt, self.sol) if s is not None]
        if self.mgmt is not None:
            self.mgmt.farewell_reason = reason
        for session in sessions:
            session.stop()
        deadline = time.monotonic() + STOP_GRACE
        for session in sessions:
            session.join(max(0.0, deadline - time.monotonic()))
        self.generation += 1  # late callbacks of the old threads are ignored
        for name in ("management", "solution"):
            with contextlib.suppress(OSError):
                self.state.set(name, False)
        self.mgmt = self.sol = None


def _document(config: Config) -> dict[str, Any]:
    """A configuration as the document it could have been parsed from."""
    a, q, b = config.agent, config.queue, config.backoff
    agent: dict[str, Any] = {
        "data_dir": str(a.data_dir),
        "socket": str(a.socket),
        "state_file": str(a.state_file),
        "health_interval": a.health_interval,
        "health_heartbeat": a.health_heartbeat,
        "keepalive": a.keepalive,
        "confirm_window": a.confirm_window,
    }
    if a.socket_group is not None:
        agent["socket_group"] = a.socket_group
    return {
        "device": {
            "id": config.device.id,
            "certificate": str(config.device.certificate),
            "key": str(config.device.key),
            "ca": str(config.device.ca),
        },
        "management": {"host": config.management.host, "port": config.management.port},
        "solution": {"host": config.solution.host, "port": config.solution.port},
        "agent": agent,
        "queue": {
            "max_bytes": q.max_bytes,
            "max_age": q.max_age,
            "max_message_bytes": q.max_message_bytes,
        },
        "backoff": {"initial": b.initial, "multiplier": b.multiplier, "cap": b.cap},
        "update": {"allow_downgrade": config.update.allow_downgrade},
        "link": config.link._asdict(),
    }
