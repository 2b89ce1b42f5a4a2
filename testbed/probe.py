"""A blocking MQTT 5 client for tests and the demo: a fake device or a service's eye.

Every call waits for the broker's answer (CONNACK, SUBACK, PUBACK) with a
timeout, and received messages are collected in a queue.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from twelvefactor_services.mqtt import Endpoint, Identity, connect_properties, make_client


class ProbeError(RuntimeError):
    pass


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    def json(self) -> Any:
        return json.loads(self.payload)


class Probe:
    def __init__(
        self,
        endpoint: Endpoint,
        identity: Identity,
        client_id: str,
        *,
        clean_start: bool = True,
        session_expiry: int = 0,
        keepalive: int = 30,
        will: tuple[str, bytes, bool] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.client = make_client(client_id, identity)
        self.messages: queue.Queue[Received] = queue.Queue()
        self._lock = threading.Lock()
        self._connack: queue.Queue[ReasonCode] = queue.Queue()
        self._disconnected = threading.Event()
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._sub_done = threading.Condition(self._lock)
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self._keepalive = keepalive
        if will is not None:
            topic, payload, retain = will
            props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            props.WillDelayInterval = 0
            self.client.will_set(topic, payload, qos=1, retain=retain, properties=props)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # paho callbacks (network thread)
    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._connack.put(rc)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        self._disconnected.set()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        with self._sub_done:
            self._subacks[mid] = codes
            self._sub_done.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(msg.topic, bytes(msg.payload), msg.retain, msg.qos))

    # blocking API
    def connect(self, timeout: float = 20.0) -> ReasonCode:
        """Connect and wait for CONNACK; raises ProbeError on a refused or failed connection."""
        self._disconnected.clear()
        try:
            self.client.connect(
                self.endpoint.host,
                self.endpoint.port,
                keepalive=self._keepalive,
                clean_start=self._clean_start,
                properties=connect_properties(self._session_expiry),
            )
        except OSError as exc:  # includes ssl.SSLError: refused during the handshake
            raise ProbeError(f"connection failed: {exc}") from exc
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                rc = self._connack.get(timeout=0.1)
                break
            except queue.Empty:
                if self._disconnected.is_set():
                    self.client.loop_stop()
                    raise ProbeError("connection closed before CONNACK") from None
                if time.monotonic() > deadline:
                    self.client.loop_stop()
                    raise ProbeError("no CONNACK") from None
        if rc.is_failure:
            self.client.loop_stop()
            raise ProbeError(f"connection refused: {rc}")
        return rc

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 20.0) -> ReasonCode:
        result, mid = self.client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ProbeError(f"subscribe failed locally: {mqtt.error_string(result)}")
        with self._sub_done:
            if not self._sub_done.wait_for(lambda: mid in self._subacks, timeout):
                raise ProbeError(f"no SUBACK for {topic}")
            return self._subacks.pop(mid)[0]

    def publish(
        self,
        topic: str,
        payload: bytes | str | dict[str, Any],
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=20)
        if not info.is_published():
            raise ProbeError(f"publish to {topic} not acknowledged")

    def wait_for(
        self, match: Callable[[Received], bool] = lambda _m: True, timeout: float = 20.0
    ) -> Received:
        """The next received message that matches (others are discarded)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProbeError("no matching message")
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                raise ProbeError("no matching message") from None
            if match(msg):
                return msg

    def drain(self, quiet: float = 1.0) -> list[Received]:
        """Everything that arrives until nothing has come for ``quiet`` seconds."""
        out: list[Received] = []
        while True:
            try:
                out.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return out

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a power cut would."""
        self.client.loop_stop()  # first, or paho's loop thread would reconnect
        sock = self.client.socket()
        if sock is not None:
            sock.close()
