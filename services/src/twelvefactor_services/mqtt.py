"""MQTT 5 clients with mutual TLS (paho-mqtt 2.x), shared by the services and tests."""

from __future__ import annotations

import queue
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class Identity:
    """A client certificate and the CA that signed the broker's certificate."""

    cert: Path
    key: Path
    ca: Path


def make_client(
    client_id: str,
    identity: Identity,
    *,
    manual_ack: bool = False,
) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    ctx = ssl.create_default_context(cafile=str(identity.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(identity.cert), str(identity.key))
    client.tls_set_context(ctx)
    return client


def connect_properties(session_expiry: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry
    return props


def run_until(client: mqtt.Client, stop: threading.Event) -> None:
    """Connect (connect_async first) and serve in paho's own thread until `stop` is set.

    Not `loop_forever` in the main thread: paho writes a publish made from any
    other thread straight to the socket unless its loop runs in a thread it
    started (`loop_start`), so a publisher thread beside `loop_forever` writes
    on the TLS stream while the loop writes its acknowledgements, the bytes
    interleave, and the broker drops the session with "protocol error" (seen
    under bursts: reports sent meanwhile were lost to a clean session).
    """
    client.loop_start()
    try:
        stop.wait()
    finally:
        client.disconnect()
        client.loop_stop()


class Connection:
    """Tracks a paho client's connection state for readiness checks and logs."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.last_reason: str | None = None

    def on_connect(self, reason: ReasonCode) -> None:
        self.last_reason = str(reason)
        if not reason.is_failure:
            self.connected.set()

    def on_disconnect(self, reason: ReasonCode) -> None:
        self.last_reason = str(reason)
        self.connected.clear()


class Inbox:
    """What paho delivered, written by one thread in groups and acknowledged after.

    Each group is what arrived while the last one was written (at most `most`):
    `write` takes it in one transaction, and only when `write` returns are its messages
    acknowledged (a client made with `manual_ack`), so the broker keeps what a crash
    or an outage left unwritten. A `write` that raises stops the writer with that group
    unacknowledged (the service stops: the broker hands it over again on the restart).
    """

    def __init__(
        self,
        client: mqtt.Client,
        write: Callable[[list[mqtt.MQTTMessage]], None],
        stopping: threading.Event,
        most: int = 200,
    ) -> None:
        self.client = client
        self.write = write
        self.stopping = stopping
        self.most = most
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def put(self, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        """Until stopping, and then until what was delivered is written."""
        while not self.stopping.is_set() or not self.messages.empty():
            try:
                group = [self.messages.get(timeout=0.5)]
            except queue.Empty:
                continue
            while len(group) < self.most:
                try:
                    group.append(self.messages.get_nowait())
                except queue.Empty:
                    break
            try:
                self.write(group)
            except Exception:  # the service logged it and stops: nothing more is taken
                return
            for msg in group:
                if msg.qos > 0:
                    self.client.ack(msg.mid, msg.qos)
