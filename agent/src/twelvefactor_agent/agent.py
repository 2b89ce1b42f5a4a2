"""The agent process: queue, local API, both sessions, state file, systemd.

Threads: one per MQTT session, one for the local API; the main thread only
waits for a signal and pets the systemd watchdog, and only while every worker
thread is alive and has been through its loop recently, so a wedged thread
gets the agent restarted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from types import FrameType

from . import __version__, sdnotify
from .config import Config
from .forwarder import SolutionSession
from .localapi import ApiServer, bind_socket
from .management import ManagementSession
from .mqtt import LastError, MqttSession
from .queue import Queue, QueueUnavailable
from .statefile import StateFile

log = logging.getLogger("twelvefactor.agent")

# A worker that has not been round its loop for this long counts as stuck.
# Its loop wakes every second; a blocking connect or SQLite's busy wait take
# at most tens of seconds.
STUCK_AFTER = 45.0
STOP_GRACE = 10.0


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.last_error = LastError()
        self.stop_event = threading.Event()
        self.state = StateFile(config.agent.state_file)

    def _on_state(self, session: str, online: bool) -> None:
        try:
            if self.state.set(session, online):
                log.info("%s session %s", session, "online" if online else "offline")
        except OSError as exc:
            log.error("cannot write %s: %s", self.state.path, exc)

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.stop_event.set()

    def run(self) -> int:
        cfg = self.config
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        log.info("twelvefactor-agent %s for device %s", __version__, cfg.device.id)
        try:
            cfg.agent.data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
            queue_path = cfg.agent.data_dir / "queue.db"
            api_queue = Queue(queue_path, cfg.queue, durable=True)
            sol_queue = Queue(queue_path, cfg.queue, durable=False)
            mgmt_queue = Queue(queue_path, cfg.queue, durable=False)
        except (OSError, QueueUnavailable) as exc:
            log.error("cannot open the queue in %s: %s", cfg.agent.data_dir, exc)
            return 1
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

        mgmt = ManagementSession(cfg, mgmt_queue, self._on_state, self.last_error)
        sol = SolutionSession(cfg, sol_queue, self._on_state, self.last_error)
        sessions: dict[str, MqttSession] = {"management": mgmt, "solution": sol}

        def status() -> dict[str, object]:
            return {
                "device": cfg.device.id,
                "management": "online" if mgmt.online else "offline",
                "solution": "online" if sol.online else "offline",
                "queue": api_queue.stats().as_json(),
            }

        api = ApiServer(listener, api_queue, status, on_commit=sol.wake)
        api.last_error = self.last_error.set
        api.start()
        mgmt.start()
        sol.start()
        sdnotify.notify(f"READY=1\nSTATUS=serving {cfg.agent.socket}\nMAINPID={os.getpid()}")
        log.info("local API on %s", cfg.agent.socket)

        workers: list[ApiServer | MqttSession] = [api, mgmt, sol]
        rc = self._supervise(workers)

        sdnotify.notify("STOPPING=1")
        for session in sessions.values():
            session.stop()
        deadline = time.monotonic() + STOP_GRACE
        for session in sessions.values():
            session.join(max(0.0, deadline - time.monotonic()))
        api.stop()
        api.join(max(0.1, deadline - time.monotonic()))
        listener.close()
        with contextlib.suppress(OSError):
            cfg.agent.socket.unlink()
        for name in sessions:
            self._on_state(name, False)  # also covers a thread that did not stop in time
        for q in (api_queue, sol_queue, mgmt_queue):
            q.close()
        log.info("stopped")
        return rc

    def _supervise(self, workers: list[ApiServer | MqttSession]) -> int:
        interval = sdnotify.watchdog_interval()
        tick = min(interval, 5.0) if interval else 5.0
        next_ping = 0.0
        while not self.stop_event.wait(tick):
            now = time.monotonic()
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
