"""MQTT 5 clients with mutual TLS (paho-mqtt 2.x), shared by the services and tests."""

from __future__ import annotations

import ssl
import threading
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
