"""The solution service process: MQTT consumer (manual acks), dedup store, delivery workers,
and the proxy for third-party APIs (proxyexec.py).

Application data comes through a durable plain subscription (docs/decisions.md);
proxy requests through a *shared* subscription (`$share/<group>-proxy/sol/+/up/proxy`),
so among several copies exactly one gets each request and no call is made twice.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from twelvefactor_agent.protocol.envelope import ProtocolError
from twelvefactor_agent.protocol.topics import SOLUTION_DATA_UP, SOLUTION_PROXY_UP, parse_up

from twelvefactor_services.inbox import Inbox
from twelvefactor_services.mqtt import (
    Connection,
    Endpoint,
    Identity,
    connect_properties,
    make_client,
    run_until,
)
from twelvefactor_services.solution.delivery import DeliveryWorker
from twelvefactor_services.solution.envelope import Envelope, parse_data
from twelvefactor_services.solution.proxyconfig import EMPTY, ProxyConfig
from twelvefactor_services.solution.proxyexec import Proxy
from twelvefactor_services.solution.receivers import Receiver
from twelvefactor_services.solution.store import Store
from twelvefactor_services.topics import shared

log = logging.getLogger("twelvefactor.solution")
KEEPALIVE = 30
# A persistent session: while every copy is down the broker keeps the messages,
# and a message not yet acknowledged when a copy dies is delivered again.
SESSION_EXPIRY = 7 * 86400


@dataclass(frozen=True)
class SolutionConfig:
    db: str | Path  # a SQLite file's path or a postgresql:// URL
    identity: Identity
    broker: Endpoint
    # None: a plain persistent subscription per copy (the default). mosquitto 2.0
    # does not restore shared subscriptions from its persistence file, so after a
    # broker restart everything published before the service is back would be
    # lost (measured: docs/decisions.md). Copies then all receive every message
    # and the shared dedup table lets one of them keep it.
    group: str | None
    receivers: Sequence[Receiver]
    instance: int = 1
    ready_file: Path | None = None
    max_backoff: float = 30.0
    max_attempts: int = 10  # refusals before a message becomes a dead letter
    proxy: ProxyConfig = EMPTY
    # The proxy's shared-subscription group (secret, like the management one).
    proxy_group: str = "solution-proxy"
    proxy_max_per_device: int = 256  # calls in flight from one device
    proxy_max_per_group: int = 1000  # ... from the devices of one proxy group
    proxy_workers: int = 32


class SolutionService:
    def __init__(self, cfg: SolutionConfig) -> None:
        self.cfg = cfg
        self.store: Store | None = None  # opened in the MQTT thread
        self.conn = Connection()
        self.stop_event = threading.Event()  # the workers stop
        self.stop_requested = threading.Event()  # the service stops (signal, store failure)
        self.failed = False
        # Stable across restarts: a copy restarted after a crash takes its lease back at once
        # (two live copies never share an instance number: the broker allows one client id).
        owner = f"{socket.gethostname()}:solution-{cfg.instance}"
        self.workers = [
            DeliveryWorker(
                cfg.db,
                r,
                owner,
                self.stop_event,
                max_backoff=cfg.max_backoff,
                max_attempts=cfg.max_attempts,
            )
            for r in cfg.receivers
        ]
        self.client = make_client(f"solution-{cfg.instance}", cfg.identity, manual_ack=True)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.inbox = Inbox(self.client, self._store, self._refused, self.stop_requested, log)
        self.proxy = Proxy(
            cfg.proxy,
            self._publish_answer,
            workers=cfg.proxy_workers,
            max_per_device=cfg.proxy_max_per_device,
            max_per_group=cfg.proxy_max_per_group,
        )

    def _publish_answer(self, topic: str, correlation: bytes, payload: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = correlation
        self.client.publish(topic, payload, qos=1, properties=props)

    def _on_connect(self, c: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any) -> None:
        self.conn.on_connect(rc)
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)
            return
        log.info("connected (session present: %s)", flags.session_present)
        topic = (
            SOLUTION_DATA_UP if self.cfg.group is None else shared(self.cfg.group, SOLUTION_DATA_UP)
        )
        c.subscribe([(topic, 1), (shared(self.cfg.proxy_group, SOLUTION_PROXY_UP), 1)])

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.conn.on_disconnect(rc)
        log.warning("disconnected from the broker: %s", rc)

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        refused = [c for c in codes if c.is_failure]
        if refused:
            log.error("subscription refused: %s", refused[0])
            return
        if self.cfg.ready_file is not None and not self.cfg.ready_file.exists():
            self.cfg.ready_file.write_text("ready\n")

    def _on_message(self, c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        up = parse_up(msg.topic)
        if up is not None and up.side == "sol" and up.rest == ("proxy",):
            # Acknowledged first: a call is never made twice, not even after a crash.
            c.ack(msg.mid, msg.qos)
            try:
                self.proxy.handle(up.device, bytes(msg.payload), getattr(msg, "properties", None))
            except Exception:
                log.exception("proxy request from %s not handled", up.device)
            return
        self.inbox.put(msg)  # data: stored in groups, acknowledged after (inbox.py)

    def _store(self, group: list[mqtt.MQTTMessage]) -> None:
        """A group of data messages in one transaction (the inbox's writer); the delivery
        workers woken for what was new."""
        if self.handle_many([(m.topic, bytes(m.payload)) for m in group]):
            for w in self.workers:
                w.wake.set()

    def _refused(self, msg: mqtt.MQTTMessage, _exc: Exception) -> bool:
        """A message the store refused on its own stops the service, unacknowledged: the
        broker hands it over again when this copy (or its restart) resumes the session."""
        log.exception("could not store a message from %s; stopping", msg.topic)
        self.failed = True
        self.client.disconnect()
        self.stop_requested.set()
        return False

    def handle_many(self, messages: Sequence[tuple[str, bytes]]) -> int:
        """Validate the messages and store the valid ones in one transaction; how many
        envelopes were new. Invalid ones are dropped (logged)."""
        valid: list[tuple[str, list[Envelope]]] = []
        for topic, payload in messages:
            up = parse_up(topic)
            if up is None or up.side != "sol":
                log.warning("dropped message on unexpected topic %r", topic)
                continue
            try:
                valid.append((up.device, parse_data(up.device, up.rest, payload)))
            except ProtocolError as exc:
                log.warning("dropped message from %s on %s: %s", up.device, topic, exc)
        if not valid:
            return 0
        if self.store is None:
            self.store = Store(self.cfg.db)
        names = [r.name for r in self.cfg.receivers]
        counts = self.store.accept_many([envs for _, envs in valid], time.time(), names)
        for (device, envs), new in zip(valid, counts, strict=True):
            if new < len(envs):
                seqs = f"{envs[0].seq}" if len(envs) == 1 else f"{envs[0].seq}-{envs[-1].seq}"
                some = "" if new == 0 else f" ({len(envs) - new} of {len(envs)})"
                log.info("duplicate %s seq %s%s ignored", device, seqs, some)
        return sum(counts)

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; 1 if stopped by a storage failure."""

        def stop(_sig: int, _frame: FrameType | None) -> None:
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for w in self.workers:
            w.start()
        self.inbox.start()
        self.client.connect_async(
            self.cfg.broker.host,
            self.cfg.broker.port,
            keepalive=KEEPALIVE,
            clean_start=False,
            properties=connect_properties(SESSION_EXPIRY),
        )
        run_until(self.client, self.stop_requested)
        self.inbox.join(15)
        self.proxy.close()
        self.stop_event.set()
        for w in self.workers:
            w.wake.set()
            w.join(timeout=15)
        if self.store is not None:
            self.store.close()
        if self.cfg.ready_file is not None:
            self.cfg.ready_file.unlink(missing_ok=True)
        log.info("stopped")
        return 1 if self.failed else 0
