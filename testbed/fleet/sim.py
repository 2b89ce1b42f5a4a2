"""Simulated devices: many real MQTT 5 clients with mutual TLS in one event loop per process.

Each device has the agent's two sessions (``<id>-mgmt``, ``<id>-sol``), its own
certificate, and says what an agent says, built with the agent's own code: the
topic names (``protocol.topics``), the payloads (``session.payloads``: online,
will, meta, health, the data envelope), the job parser and checks
(``update.decide``), the configuration parser (``config.reconfig``). When to
connect and how long to back off comes from the agent's pure session machine
(``session.machine.SessionMachine``) with the agent's ``Backoff`` (exponential,
full jitter), so a connect storm after a broker restart is the fleet's real one.
What is not simulated: the durable queue (unacknowledged data is kept in memory
and resent on reconnect, as the queue would), the download and the install (a
job accepted is reported through every state to ``succeeded``, the final report
carrying its steps as the agent's does, and sent again when the job is offered
again).

Why one loop, not a thread per device: 2,000 devices are 4,000 TLS sessions;
4,000 threads on 2 cores spend their time switching and in the GIL. Each
worker process drives its paho clients through paho's external-loop API
(``loop_read``, ``loop_write``, ``loop_misc``) from one ``selectors`` loop, as the
agent's own session thread does for its one client. paho's ``connect`` blocks
for the TCP and TLS handshake, so connects run on a small thread pool and the
socket joins the loop once the handshake is done (docs/decisions.md).

The worker talks to its parent over a ``multiprocessing`` connection: commands
in (start or stop data, stop), batches of timed events out (a session up, a
job received, a job finished), and a final tally per device.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import heapq
import itertools
import json
import logging
import os
import random
import resource
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from twelvefactor_agent.config.reconfig import DesiredError, Report, parse_desired
from twelvefactor_agent.forward.queue import Message, QueueStats
from twelvefactor_agent.protocol import states, topics
from twelvefactor_agent.protocol.envelope import ProtocolError, dumps
from twelvefactor_agent.session import payloads
from twelvefactor_agent.session.machine import Action, SessionMachine
from twelvefactor_agent.session.mqtt import SESSION_EXPIRY, new_client
from twelvefactor_agent.session.unheard import FIRST_RETRY, Unheard, nobody_heard
from twelvefactor_agent.update.decide import decide, parse_job, refusal_payload, report_payload
from twelvefactor_agent.update.steps import final_chain
from twelvefactor_agent.util.backoff import Backoff

log = logging.getLogger("twelvefactor.fleet")

AGENT_VERSION = "0.1.0-sim"
OS_VERSION = "1.0"
HWREVISION = "qemux86-64 1.0"
STREAM = "bench"
WINDOW = 100  # in-flight data messages per device, as the agent's solution session
MISC_EVERY = 1.0  # keepalive bookkeeping (loop_misc) for every client, at least this often
EVENTS_EVERY = 0.25  # events go to the parent in batches at most this far apart
TIMER_BATCH = 50  # timers run between two rounds of socket I/O, at most


@dataclass(frozen=True)
class DeviceSpec:
    id: str
    cert: str
    key: str
    ca: str


@dataclass(frozen=True)
class SimSettings:
    host: str
    management_port: int
    solution_port: int
    health_interval: float
    keepalive: int
    backoff_initial: float
    backoff_multiplier: float
    backoff_cap: float
    connect_threads: int
    payload_bytes: int
    seed: int


class Abandoned(Exception):
    """A connect given up on (the machine's CONNACK deadline) before a thread took it."""


class Session:
    """One MQTT session of a simulated device and the agent's machine that drives it."""

    def __init__(self, device: Device, kind: str, port: int, settings: SimSettings) -> None:
        self.device = device
        self.kind = kind  # topics.MGMT or topics.SOL
        self.port = port
        self.client_id = f"{device.spec.id}-{kind}"
        rng = random.Random(f"{settings.seed}-{self.client_id}")
        backoff = Backoff(
            settings.backoff_initial, settings.backoff_multiplier, settings.backoff_cap, rng.uniform
        )
        self.machine = SessionMachine(backoff, time.monotonic())
        self.client: mqtt.Client | None = None
        self.sock: Any = None  # the socket registered with the selector
        self.mask = 0
        self.generation = 0  # a connect that finishes for an older generation is dropped
        self.timer_due: float | None = None

    @property
    def online(self) -> bool:
        return self.machine.online and self.client is not None


class Device:
    """What one simulated device knows: its sessions, its data, its jobs, its configuration."""

    def __init__(self, spec: DeviceSpec, settings: SimSettings) -> None:
        self.spec = spec
        self.mgmt = Session(self, topics.MGMT, settings.management_port, settings)
        self.sol = Session(self, topics.SOL, settings.solution_port, settings)
        self.queue_id = random.Random(f"{settings.seed}-{spec.id}-queue").getrandbits(64)
        self.seq = 0
        self.unacked: dict[int, bytes] = {}  # seq -> envelope, until PUBACK (the queue's rows)
        self.mid_seq: dict[int, int] = {}  # the solution connection's mid -> seq
        self.health_sent = 0
        self.health_acked = 0
        # the management connection's health mid -> ts, payload, "new" / "probe" / "again"
        self.health_mids: dict[int, tuple[float, bytes, str]] = {}
        self.health_acked_ts: list[float] = []  # what reached a subscriber, by its ts
        # Reports the broker had no subscriber for, kept and sent again as the agent does.
        rng = random.Random(f"{settings.seed}-{spec.id}-unheard")
        cap = max(FIRST_RETRY, settings.health_interval)
        self.unheard = Unheard(Backoff(FIRST_RETRY, 2.0, cap, rng.uniform))
        self.health_unheard = 0  # PUBACKs that said "no matching subscribers"
        self.health_again = 0  # reports sent again (probes and the rest after one is heard)
        self.jobs_done: set[str] = set()
        # how each job ended, its final report: sent again when the job is offered again
        self.finals: dict[str, bytes] = {}
        self.final_mids: dict[int, str] = {}  # the mid of a job's `succeeded` -> job
        self.config_report: bytes | None = None
        self.booted = time.monotonic()
        # The device's TLS identity, loaded once for both sessions before the loop starts
        # (loading a key and a certificate per connect would hold the loop up in a storm).
        self.ssl_context = _context(spec)

    @property
    def queue_hex(self) -> str:
        return f"{self.queue_id:016x}"


def _context(spec: DeviceSpec) -> ssl.SSLContext:
    """The agent's TLS settings (session.mqtt.tls_context) with this device's files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=spec.ca)
    ctx.load_cert_chain(certfile=spec.cert, keyfile=spec.key)
    return ctx


class Worker:
    """The devices of one process and the loop that drives all their sessions."""

    def __init__(self, specs: list[DeviceSpec], settings: SimSettings, ctl: Connection) -> None:
        self.settings = settings
        self.ctl = ctl
        self.devices = [Device(s, settings) for s in specs]
        self.sel = selectors.DefaultSelector()
        self.pool = ThreadPoolExecutor(settings.connect_threads, thread_name_prefix="connect")
        self.connected: collections.deque[tuple[Session, int, mqtt.Client, BaseException | None]]
        self.connected = collections.deque()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.sel.register(ctl, selectors.EVENT_READ, "ctl")
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self.counter = itertools.count()
        self.deferred: list[tuple[Session, str, Any]] = []  # paho callbacks, handled after I/O
        self.events: list[tuple[Any, ...]] = []
        self.events_due = 0.0
        self.data_interval = 0.0  # seconds between data messages per device, 0: none
        self.data_generation = 0
        self.health_on = True  # health every health_interval until the run's end is told
        self.stopping = False
        self.rng = random.Random(settings.seed)
        self.connect_errors = 0
        self.pool_waits: list[float] = []  # seconds each connect waited for a pool thread
        self.payload = os.urandom(settings.payload_bytes)

    # -- timers ------------------------------------------------------------------------

    def at(self, due: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (due, next(self.counter), fn))

    def _schedule_machine(self, s: Session) -> None:
        due = s.machine.next_wakeup()
        if due is not None and due != s.timer_due:
            s.timer_due = due
            self.at(due, lambda: self._poll_machine(s, due))

    def _poll_machine(self, s: Session, due: float) -> None:
        if s.timer_due != due:
            return  # a newer wake-up replaced this one
        s.timer_due = None
        self.apply(s, s.machine.poll(time.monotonic()))

    # -- the session machine's actions -------------------------------------------------

    def apply(self, s: Session, actions: list[Action]) -> None:
        for action in actions:
            if action is Action.CONNECT:
                self._connect(s)
            elif action is Action.ABORT:
                self._close(s)
            elif action is Action.UP:
                self._up(s)
            elif action is Action.DOWN:
                self._down(s)
            # FAREWELL and DISCONNECT: the simulator never stops a session cleanly
            # (the bench ends by closing every socket; the will says "lost").
        self._schedule_machine(s)

    def _connect(self, s: Session) -> None:
        s.generation += 1
        generation = s.generation
        client = new_client(s.client_id, WINDOW)
        client.on_connect = lambda c, u, f, reason, p: self._defer(s, c, "connack", reason)
        client.on_disconnect = lambda c, u, f, reason, p: self._defer(s, c, "lost", reason)
        client.on_publish = lambda c, u, mid, reason, p: self._defer(s, c, "puback", (mid, reason))
        client.on_message = lambda c, u, msg: self._defer(s, c, "message", msg)
        if s.kind == topics.MGMT:
            props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            props.WillDelayInterval = 0
            client.will_set(
                topics.mgmt_up(s.device.spec.id, "online"),
                payloads.will(),
                qos=1,
                retain=True,
                properties=props,
            )
        client.tls_set_context(s.device.ssl_context)
        s.client = client
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = SESSION_EXPIRY

        asked = time.monotonic()

        def handshake() -> None:
            self.pool_waits.append(time.monotonic() - asked)
            if generation != s.generation:
                raise Abandoned  # given up on while it waited for a thread
            client.connect(
                self.settings.host,
                s.port,
                keepalive=self.settings.keepalive,
                clean_start=False,
                properties=connect_props,
            )

        def finished(fut: Future[None]) -> None:
            self.connected.append((s, generation, client, fut.exception()))
            with contextlib.suppress(OSError):
                self.wake_w.send(b"\0")

        self.pool.submit(handshake).add_done_callback(finished)

    def _handshake_done(
        self, s: Session, generation: int, client: mqtt.Client, error: BaseException | None
    ) -> None:
        if generation != s.generation or s.client is not client:
            sock = client.socket()  # given up on meanwhile (CONNACK timeout)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
            return
        if isinstance(error, Abandoned):
            return
        if error is not None or client.socket() is None:
            self.connect_errors += 1
            self.apply(s, s.machine.connect_failed(time.monotonic()))
            return
        s.sock = client.socket()
        s.mask = 0
        self._update_mask(s)
        if isinstance(s.sock, ssl.SSLSocket) and s.sock.pending() > 0:
            # The CONNACK came with the handshake's last records: OpenSSL holds it already
            # and the kernel's buffer is empty, so select would never say readable.
            self._io(s, selectors.EVENT_READ)
            self._handle_deferred()
            self._update_mask(s)

    def _close(self, s: Session) -> None:
        s.generation += 1
        s.client = None
        if s.sock is not None:
            if s.mask:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(s.sock)
            with contextlib.suppress(OSError):
                s.sock.close()
        # A client whose handshake is still on the pool is left alone: its thread owns the
        # socket, and closing it here would free the descriptor for another connect to
        # reuse while the first thread still writes to it (two streams in one, which the
        # broker drops as a protocol error). _handshake_done closes it when it returns.
        s.sock = None
        s.mask = 0

    def _update_mask(self, s: Session) -> None:
        client = s.client
        if client is None or s.sock is None or client.socket() is None:
            if s.sock is not None and s.mask:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(s.sock)
                s.mask = 0
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.want_write() else 0)
        if want == s.mask:
            return
        if s.mask:
            self.sel.modify(s.sock, want, s)
        else:
            self.sel.register(s.sock, want, s)
        s.mask = want

    # -- what a device does ------------------------------------------------------------

    def _up(self, s: Session) -> None:
        d = s.device
        client = s.client
        assert client is not None
        device = d.spec.id
        now = time.time()
        self.events.append(("up", device, s.kind, now))
        if s.kind == topics.MGMT:
            client.subscribe(topics.mgmt_down(device, "#"), qos=1)
            client.publish(
                topics.mgmt_up(device, "online"), payloads.online(now), qos=1, retain=True
            )
            client.publish(topics.mgmt_up(device, "meta"), self._meta(d, now), qos=1, retain=True)
            self._health(d)
            self._schedule_probe(d)
            if d.config_report is not None:
                client.publish(
                    topics.mgmt_up(device, "config"), d.config_report, qos=1, retain=True
                )
        else:
            client.subscribe(topics.sol_down(device, "#"), qos=1)
            d.mid_seq.clear()
            for seq in sorted(d.unacked):  # what the queue still holds, in seq order
                self._send_data(d, seq)
        self._update_mask(s)

    def _down(self, s: Session) -> None:
        self.events.append(("down", s.device.spec.id, s.kind, time.time()))
        if s.kind == topics.SOL:
            s.device.mid_seq.clear()
        else:
            s.device.final_mids.clear()
            if any(kind == "probe" for _, _, kind in s.device.health_mids.values()):
                s.device.unheard.lost()
            s.device.health_mids.clear()

    def _meta(self, d: Device, now: float) -> bytes:
        return payloads.meta(
            ts=now,
            device=d.spec.id,
            agent_version=AGENT_VERSION,
            os={
                "id": "twelvefactor",
                "version": OS_VERSION,
                "pretty": f"twelvefactor {OS_VERSION}",
            },
            kernel="6.12.0-sim",
            machine="x86_64",
            hardware=HWREVISION,
            slot="A",
            boot={"slot": "A", "bootcount": 1, "upgrade_available": False, "rollback": None},
        )

    def _health(self, d: Device) -> None:
        """Health now and every health_interval while the management session is up."""
        s = d.mgmt
        if not s.online or s.client is None or not self.health_on:
            return
        depth = len(d.unacked)
        ts = time.time()
        body = payloads.health(
            ts=ts,
            uptime_s=time.monotonic() - d.booted,
            load=[0.1, 0.1, 0.1],
            memory={"total_kb": 1_000_000, "available_kb": 800_000},
            data={"path": "/data", "total_bytes": 1 << 30, "free_bytes": 1 << 29},
            slot="A",
            os_version=OS_VERSION,
            agent_version=AGENT_VERSION,
            queue=QueueStats(depth, depth * self.settings.payload_bytes, 0, None),
            last_error=None,
        )
        self._send_health(d, ts, body, "new")
        d.health_sent += 1
        generation = s.generation
        self.at(
            time.monotonic() + self.settings.health_interval,
            lambda: self._health(d) if s.generation == generation else None,
        )

    def _send_health(self, d: Device, ts: float, body: bytes, kind: str) -> None:
        s = d.mgmt
        assert s.client is not None
        info = s.client.publish(topics.mgmt_up(d.spec.id, "health"), body, qos=1)
        d.health_mids[info.mid] = (ts, body, kind)
        if kind != "new":
            d.health_again += 1
        self._update_mask(s)

    def _schedule_probe(self, d: Device) -> None:
        if d.unheard.retry_at is not None:
            self.at(d.unheard.retry_at, lambda: self._probe(d))

    def _probe(self, d: Device) -> None:
        """The oldest kept report again, if its time has come (session/unheard.py)."""
        if not d.mgmt.online:
            return  # the next connection's greeting, once heard, brings the rest
        body = d.unheard.due(time.monotonic())
        if body is not None:
            self._send_health(d, json.loads(body)["ts"], body, "probe")

    def _data_tick(self, d: Device, generation: int) -> None:
        if generation != self.data_generation or self.data_interval <= 0:
            return
        d.seq += 1
        message = Message(d.seq, STREAM, time.time(), self.payload)
        d.unacked[d.seq] = payloads.data_envelope(d.spec.id, d.queue_hex, message)
        if d.sol.online:
            self._send_data(d, d.seq)
            self._update_mask(d.sol)
        self.at(time.monotonic() + self.data_interval, lambda: self._data_tick(d, generation))

    def _send_data(self, d: Device, seq: int) -> None:
        client = d.sol.client
        assert client is not None
        info = client.publish(topics.data(d.spec.id, STREAM), d.unacked[seq], qos=1)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            d.mid_seq[info.mid] = seq

    def _on_message(self, s: Session, msg: mqtt.MQTTMessage) -> None:
        d = s.device
        device = d.spec.id
        client = s.client
        if client is None:
            return
        if msg.topic == topics.mgmt_down(device, "config"):
            if not msg.payload:
                return  # an empty retained message changes nothing
            try:
                version = parse_desired(bytes(msg.payload))
                report = Report(version.version, states.APPLIED)
            except DesiredError as exc:
                if exc.version is None:
                    return
                report = Report(exc.version, states.REJECTED, str(exc))
            d.config_report = dumps(report.as_json())
            client.publish(topics.mgmt_up(device, "config"), d.config_report, qos=1, retain=True)
            self.events.append(("config", device, report.version, report.status, time.time()))
        elif msg.topic == topics.mgmt_down(device, "update"):
            if not msg.payload:
                return
            self._job(s, bytes(msg.payload))

    def _job(self, s: Session, raw: bytes) -> None:
        d = s.device
        client = s.client
        assert client is not None
        up = topics.mgmt_up(d.spec.id, "update")
        try:
            job = parse_job(raw)
        except ProtocolError as exc:
            log.warning("%s: dropped a job: %s", d.spec.id, exc)
            return
        if job.job in d.jobs_done:
            # the retained copy a reconnect brings, or the service offering a quiet job
            # again: answered with its final report again, as the agent does (a report
            # lost with a service copy or a broker restart still arrives)
            final = d.finals.get(job.job)
            if final is not None:
                client.publish(up, final, qos=1)
            return
        now = time.time()
        self.events.append(("job", d.spec.id, job.job, now))
        refusal = decide(
            job, device=d.spec.id, hwrevision=HWREVISION, os_version=OS_VERSION, free_bytes=1 << 34
        )
        d.jobs_done.add(job.job)
        if refusal is not None:
            d.finals[job.job] = refusal_payload(job, refusal, now)
            client.publish(up, d.finals[job.job], qos=1)
            self.events.append(("job_end", d.spec.id, job.job, states.FAILED, now))
            return
        # No download and no install: every state the agent reports, in order.
        for state, percent in (
            (states.DOWNLOADING, 0),
            (states.DOWNLOADING, 100),
            (states.INSTALLING, 0),
            (states.INSTALLING, 100),
            (states.REBOOTING, None),
            (states.VERIFYING, None),
        ):
            client.publish(up, report_payload(job.job, state, ts=now, percent=percent), qos=1)
        chain = final_chain(states.SUCCEEDED)
        d.finals[job.job] = report_payload(job.job, chain[-1], ts=now, after=chain[:-1])
        info = client.publish(up, d.finals[job.job], qos=1)
        d.final_mids[info.mid] = job.job

    # -- paho callbacks (inside loop_read / loop_write: recorded, handled after) --------

    def _defer(self, s: Session, client: mqtt.Client, kind: str, arg: Any) -> None:
        if client is s.client:
            self.deferred.append((s, kind, arg))

    def _handle_deferred(self) -> None:
        while self.deferred:
            batch, self.deferred = self.deferred, []
            for s, kind, arg in batch:
                now = time.monotonic()
                if kind == "connack":
                    reason: ReasonCode = arg
                    if reason.is_failure:
                        self.connect_errors += 1
                        self.apply(s, s.machine.connect_failed(now))
                    else:
                        self.apply(s, s.machine.connected(now))
                elif kind == "lost":
                    self.apply(s, s.machine.lost(now))
                elif kind == "puback":
                    self._puback(s, *arg)
                elif kind == "message":
                    self._on_message(s, arg)
                    self._update_mask(s)

    def _puback(self, s: Session, mid: int, reason: ReasonCode) -> None:
        d = s.device
        if s.kind == topics.SOL:
            seq = d.mid_seq.pop(mid, None)
            if seq is not None and not reason.is_failure:
                d.unacked.pop(seq, None)
        else:
            health = d.health_mids.pop(mid, None)
            if health is not None and not reason.is_failure:
                self._health_answered(d, health, reason)
            job = d.final_mids.pop(mid, None)
            if job is not None:
                self.events.append(("job_end", d.spec.id, job, states.SUCCEEDED, time.time()))

    def _health_answered(
        self, d: Device, health: tuple[float, bytes, str], reason: ReasonCode
    ) -> None:
        ts, body, kind = health
        if nobody_heard(reason):
            d.health_unheard += 1
            d.unheard.refused(body, time.monotonic(), probe=kind == "probe")
            self._schedule_probe(d)
            return
        d.health_acked += 1
        d.health_acked_ts.append(ts)
        for kept in d.unheard.heard():
            if d.mgmt.online:
                self._send_health(d, json.loads(kept)["ts"], kept, "again")
            else:  # cannot be (a PUBACK comes on a live connection), kept all the same
                d.unheard.refused(kept, time.monotonic())

    # -- the loop ----------------------------------------------------------------------

    def _io(self, s: Session, mask: int) -> None:
        client = s.client
        if client is None:
            return
        if mask & selectors.EVENT_READ:
            client.loop_read()
            sock = client.socket()
            while isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
                client.loop_read()
                sock = client.socket()
        if client.socket() is not None and client.want_write():
            client.loop_write()

    def _control(self) -> None:
        while self.ctl.poll():
            command = self.ctl.recv()
            if command[0] == "data":
                self.data_interval = float(command[1])
                self.data_generation += 1
                if self.data_interval > 0:
                    start = time.monotonic()
                    for d in self.devices:  # spread the devices over one interval
                        offset = self.rng.uniform(0, self.data_interval)
                        generation = self.data_generation
                        self.at(start + offset, functools.partial(self._data_tick, d, generation))
            elif command[0] == "health off":  # the run's end: what was sent can be counted
                self.health_on = False
            elif command[0] == "tally":
                self.ctl.send(("tally", self._tally()))
            elif command[0] == "stop":
                self.stopping = True

    def _flush_events(self, now: float, force: bool = False) -> None:
        if self.events and (force or now >= self.events_due):
            self.ctl.send(("events", self.events))
            self.events = []
            self.events_due = now + EVENTS_EVERY

    def run(self) -> None:
        for d in self.devices:
            self.apply(d.mgmt, [])
            self.apply(d.sol, [])
        last_misc = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            while self.connected:
                self._handshake_done(*self.connected.popleft())
            # At most TIMER_BATCH timers between two looks at the sockets: a storm's
            # thousands of due connects must not keep CONNACKs waiting past their deadline.
            for _ in range(TIMER_BATCH):
                if not self.timers or self.timers[0][0] > now:
                    break
                _, _, fn = heapq.heappop(self.timers)
                fn()
            self._handle_deferred()
            timeout = MISC_EVERY
            if self.timers:
                timeout = max(0.0, min(timeout, self.timers[0][0] - time.monotonic()))
            if self.events:
                timeout = min(timeout, max(0.0, self.events_due - now))
            for key, mask in self.sel.select(timeout):
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        while self.wake_r.recv(4096):
                            pass
                elif key.data == "ctl":
                    self._control()
                else:
                    self._io(key.data, mask)
                    self._handle_deferred()
                    self._update_mask(key.data)
            while self.connected:
                self._handshake_done(*self.connected.popleft())
            self._handle_deferred()
            now = time.monotonic()
            if now - last_misc >= MISC_EVERY:
                last_misc = now
                for d in self.devices:
                    for s in (d.mgmt, d.sol):
                        if s.client is not None and s.sock is not None:
                            s.client.loop_misc()
                self._handle_deferred()
                for d in self.devices:
                    for s in (d.mgmt, d.sol):
                        self._update_mask(s)
            self._flush_events(now)
        self._flush_events(time.monotonic(), force=True)
        self._finish()

    def _tally(self) -> dict[str, dict[str, Any]]:
        return {
            d.spec.id: {
                "queue_id": d.queue_hex,
                "seq": d.seq,
                "unacked": len(d.unacked),
                "health_sent": d.health_sent,
                "health_acked": d.health_acked,
                "health_acked_ts": list(d.health_acked_ts),
                "health_unheard": d.health_unheard,
                "health_again": d.health_again,
                "health_kept": len(d.unheard),  # answered "no subscriber", not yet heard
                "health_dropped": d.unheard.dropped,  # pushed out of the kept ones by newer
                "jobs": sorted(d.jobs_done),
            }
            for d in self.devices
        }

    def _finish(self) -> None:
        tally = self._tally()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        self.ctl.send(("final", tally, cpu, self.connect_errors, max(self.pool_waits, default=0.0)))
        for d in self.devices:
            self._close(d.mgmt)
            self._close(d.sol)
        self.pool.shutdown(wait=True, cancel_futures=True)


def run_worker(specs: list[DeviceSpec], settings: SimSettings, ctl: Connection) -> None:
    """The entry point of a worker process."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s fleet %(message)s")
    Worker(specs, settings, ctl).run()
