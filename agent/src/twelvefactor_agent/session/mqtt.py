"""The I/O around one MQTT session: a thread that drives paho-mqtt.

Each session has its own thread, because paho's connect (TCP + TLS handshake)
blocks. The thread runs its own select loop over paho's socket and a wake-up
socket (paho's external-loop API: loop_read, loop_write, loop_misc), so other
threads can hand it work without touching paho, which is not safe to drive
from two threads. All decisions come from the pure SessionMachine (when to
connect, back off, announce, say goodbye); this module only carries them out.

A fresh paho client is made for every connection attempt: whatever was in
flight on a broken connection is forgotten by paho and resent from the queue
on disk, the single source of truth.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from twelvefactor_agent.config.settings import Config, Endpoint
from twelvefactor_agent.session.machine import Action, ClockWatch, Phase, SessionMachine
from twelvefactor_agent.util.backoff import Backoff

SESSION_EXPIRY = 7 * 86400
CONNECT_TIMEOUT = 10.0
# Data sent and not acknowledged by TCP for this long breaks the connection. The
# keepalive is long (the hub watches the tunnel instead), so this is what finds
# a connection whose other end is gone as soon as there is something to send,
# instead of Linux's 15 minutes of retransmissions.
TCP_USER_TIMEOUT_MS = 120_000
# The loop wakes at least this often: keepalive pings, timers, watchdog heartbeat.
MAX_SLEEP = 1.0

StateCallback = Callable[[str, bool], None]
C = TypeVar("C", bound=ssl.SSLContext)


def tls_context(config: Config, kind: type[C] = ssl.SSLContext) -> C:  # type: ignore[assignment]
    """TLS 1.2+, the server verified against the device CA, the device certificate presented."""
    ctx = kind(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(config.device.ca))
    ctx.load_cert_chain(certfile=str(config.device.certificate), keyfile=str(config.device.key))
    return ctx


class _ResumingContext(ssl.SSLContext):
    """A client context that offers the last session it was given (TLS 1.3 resumption)."""

    resume: ssl.SSLSession | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.resume is not None and kwargs.get("session") is None:
            kwargs["session"] = self.resume
        return super().wrap_socket(sock, *args, **kwargs)


# One context per endpoint and identity, kept while its files stay the same: a session
# can only be resumed through the context that made it, and a metered device makes new
# sessions at every check-in (issue 18: a resumed handshake sends no certificates).
_CONTEXTS: dict[tuple[str, int, Path, Path, Path], tuple[object, _ResumingContext]] = {}


def shared_tls_context(config: Config, endpoint: Endpoint) -> _ResumingContext:
    d = config.device
    key = (endpoint.host, endpoint.port, d.certificate, d.key, d.ca)
    try:
        stamp: object = tuple((st.st_mtime_ns, st.st_size) for st in map(os.stat, key[2:]))
    except OSError:
        stamp = None  # tls_context says what is wrong with the files
    cached = _CONTEXTS.get(key)
    if cached is not None and stamp is not None and cached[0] == stamp:
        return cached[1]
    ctx = tls_context(config, _ResumingContext)
    _CONTEXTS[key] = (stamp, ctx)
    return ctx


# Client ids that have subscribed in this process (see Action.UP).
_SUBSCRIBED: set[str] = set()


def _ignore_socket(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """The loop checks want_write() itself on every round."""


def new_client(client_id: str, window: int) -> mqtt.Client:
    """A paho client as a session uses it: MQTT 5, no reconnect of paho's own (the
    session machine decides), the connect timeout, and `window` messages in flight."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=False,
    )
    client.connect_timeout = CONNECT_TIMEOUT
    client.max_inflight_messages_set(window)
    return client


class LastError:
    """The most recent error worth reporting in health (read and written from any thread)."""

    def __init__(self) -> None:
        self.text: str | None = None

    def set(self, text: str) -> None:
        self.text = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}"


class MqttSession(threading.Thread):
    """One session's thread. Subclasses say what to do when the session is up."""

    name_suffix = ""
    window = 20

    def __init__(
        self,
        name: str,
        config: Config,
        endpoint: Endpoint,
        on_state: StateCallback,
        last_error: LastError,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(name=f"mqtt-{name}", daemon=True)
        self.session = name
        self.config = config
        self.endpoint = endpoint
        self.device = config.device.id
        self.client_id = f"{self.device}-{self.name_suffix}"
        self._on_state = on_state
        self.last_error = last_error
        b = config.backoff
        backoff = Backoff(b.initial, b.multiplier, b.cap, (rng or random.Random()).uniform)
        self.machine = SessionMachine(backoff, time.monotonic())
        self.log = logging.getLogger(f"twelvefactor.{name}")
        self.client: mqtt.Client | None = None
        self.heartbeat = time.monotonic()
        self._events: list[tuple[str, Any]] = []
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._last_misc = 0.0
        self._clock = ClockWatch(time.time(), time.monotonic())
        self.error: BaseException | None = None

    # Called from other threads

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._commands.append(fn)
        self.wake()

    def wake(self) -> None:
        # A full socket buffer already holds a wake-up: nothing is lost.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        self.call_soon(lambda: self._apply(self.machine.stop(time.monotonic())))

    @property
    def online(self) -> bool:
        return self.machine.online

    # Hooks for subclasses (run on the session thread)

    def on_up(self, client: mqtt.Client) -> None:
        pass

    def on_clock_set(self, client: mqtt.Client) -> None:
        """Connected while the wall clock was set: messages stamped before may
        carry the wrong time."""

    def on_down(self) -> None:
        pass

    def on_publish(self, mid: int, reason: ReasonCode) -> None:
        pass

    def farewell(self, client: mqtt.Client) -> bool:
        """Send the goodbye; True if it waits for an acknowledgement (then call farewell_done)."""
        return False

    def after_io(self, now: float) -> float | None:
        """Work after each round of network I/O; when to be called again at the latest."""
        return None

    def will(self) -> tuple[str, bytes] | None:
        return None

    def subscriptions(self) -> list[str]:
        """Topic filters to subscribe to (QoS 1) each time the session comes up."""
        return []

    def on_message(self, topic: str, payload: bytes, properties: Properties | None) -> None:
        """A message arrived on one of the subscriptions."""

    def on_stopped(self) -> None:
        """The thread is about to end (flush what waits)."""

    # The thread

    def run(self) -> None:
        try:
            self._loop()
            self.on_stopped()
        except BaseException as exc:  # the main thread sees the dead thread and exits
            self.error = exc
            self.log.exception("session thread failed")
        finally:
            self._close()

    def _loop(self) -> None:
        while not self.machine.stopped:
            now = time.monotonic()
            self.heartbeat = now
            while self._commands:
                self._commands.popleft()()
            moved = self._clock.step(time.time(), now)
            if moved:
                self.log.info("the wall clock was set by %+.0f s", moved)
                self._apply(self.machine.clock_set(now))
                if self.client is not None and self.machine.online:
                    self.on_clock_set(self.client)
            self._apply(self.machine.poll(now))
            self._handle_events()
            if self.machine.stopped:
                break
            hook_due = self.after_io(now)
            self._wait(now, hook_due)

    def _wait(self, now: float, hook_due: float | None) -> None:
        deadline = now + MAX_SLEEP
        for due in (self.machine.next_wakeup(), hook_due):
            if due is not None:
                deadline = min(deadline, due)
        timeout = max(0.0, deadline - now)
        sock = self.client.socket() if self.client is not None else None
        rlist: list[Any] = [self._wake_r]
        wlist: list[Any] = []
        if sock is not None:
            rlist.append(sock)
            if self.client is not None and self.client.want_write():
                wlist.append(sock)
            if isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
                timeout = 0.0  # decrypted bytes waiting inside the TLS layer
        readable, writable, _ = select.select(rlist, wlist, [], timeout)
        if self._wake_r in readable:
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
        client = self.client
        if client is not None and sock is not None:
            if sock in readable or (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0):
                client.loop_read()
            if client.socket() is not None and (sock in writable or client.want_write()):
                client.loop_write()
            now = time.monotonic()
            if client.socket() is not None and now - self._last_misc >= MAX_SLEEP:
                self._last_misc = now
                client.loop_misc()
        self._handle_events()

    def _handle_events(self) -> None:
        while self._events:
            kind, arg = self._events.pop(0)
            now = time.monotonic()
            if kind == "connack":
                if arg.is_failure:
                    self._fail(f"{self.session}: connection refused: {arg}")
                    self._apply(self.machine.connect_failed(now))
                else:
                    resumed = self._remember_tls()
                    self.log.info(
                        "connected to %s:%d%s",
                        self.endpoint.host,
                        self.endpoint.port,
                        " (TLS resumed)" if resumed else "",
                    )
                    self._apply(self.machine.connected(now))
            elif kind == "disconnect":
                if self.machine.phase is Phase.CONNECTED:
                    self._fail(f"{self.session}: connection lost: {arg}")
                self._apply(self.machine.lost(now))
            elif kind == "farewell_done":
                self._apply(self.machine.farewell_done(now))
            elif kind == "message":
                topic, payload, properties = arg
                try:
                    self.on_message(topic, payload, properties)
                except Exception:  # a message must never end the session thread
                    self.log.exception("failed to handle a message on %s", topic)

    def _remember_tls(self) -> bool:
        """Keep this connection's TLS session for the next one; True if it was resumed."""
        sock = self.client.socket() if self.client is not None else None
        if not isinstance(sock, ssl.SSLSocket):
            return False
        ctx = sock.context
        if isinstance(ctx, _ResumingContext) and sock.session is not None:
            ctx.resume = sock.session
        return bool(sock.session_reused)

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if action is Action.CONNECT:
                self._connect()
            elif action is Action.ABORT:
                self._close()
                if self.machine.phase is Phase.DISCONNECTED and self.machine.last_delay is not None:
                    self.log.info("next attempt in %.1f s", self.machine.last_delay)
            elif action is Action.UP:
                assert self.client is not None
                self._on_state(self.session, True)
                # The first subscription of this process takes the retained messages
                # (the agent's state may have been lost); later ones only if the broker
                # lost the session: what was published meanwhile is queued in it.
                # A metered device's check-in then costs no retained copies (issue 18).
                handling = 1 if self.client_id in _SUBSCRIBED else 0
                for topic in self.subscriptions():
                    options = SubscribeOptions(qos=1, retainHandling=handling)
                    self.client.subscribe(topic, options=options)
                _SUBSCRIBED.add(self.client_id)
                self.on_up(self.client)
            elif action is Action.DOWN:
                self.on_down()
                self._on_state(self.session, False)
            elif action is Action.FAREWELL:
                assert self.client is not None
                if not self.farewell(self.client):
                    self._events.append(("farewell_done", None))
            elif action is Action.DISCONNECT:
                self._disconnect()

    def _connect(self) -> None:
        self.log.debug("connecting to %s:%d", self.endpoint.host, self.endpoint.port)
        client = new_client(self.client_id, self.window)
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_publish = self._cb_publish
        client.on_message = self._cb_message
        # With a write callback registered, paho only queues a publish and this
        # loop writes it out (select says writable, loop_write): a batch of
        # publishes costs one loop_write, not one each, from inside publish().
        client.on_socket_register_write = _ignore_socket
        client.on_socket_unregister_write = _ignore_socket
        will = self.will()
        if will is not None:
            props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            props.WillDelayInterval = 0
            client.will_set(will[0], will[1], qos=1, retain=True, properties=props)
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = SESSION_EXPIRY
        self.client = client
        try:
            client.tls_set_context(shared_tls_context(self.config, self.endpoint))
            client.connect(
                self.endpoint.host,
                self.endpoint.port,
                keepalive=self.config.agent.keepalive,
                clean_start=False,
                properties=connect_props,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._fail(
                f"{self.session}: cannot connect to {self.endpoint.host}:"
                f"{self.endpoint.port}: {exc}"
            )
            self._apply(self.machine.connect_failed(time.monotonic()))
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):  # an ssl.SSLSocket is one
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
        self._last_misc = time.monotonic()

    def _disconnect(self) -> None:
        client = self.client
        if client is None:
            return
        client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"))
        # Push the DISCONNECT out before closing (bounded: the socket may be stuck).
        deadline = time.monotonic() + 2.0
        while client.socket() is not None and client.want_write() and time.monotonic() < deadline:
            sock = client.socket()
            if sock is not None:
                select.select([], [sock], [], 0.1)
            client.loop_write()
        self._close()

    def _close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _fail(self, text: str) -> None:
        self.log.warning("%s", text)
        self.last_error.set(text)

    # paho callbacks: run inside loop_read/loop_write on this thread; only record events.

    def _cb_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if client is self.client:
            self._events.append(("connack", reason))

    def _cb_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if client is self.client:
            self._events.append(("disconnect", reason))

    def _cb_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if client is self.client:
            props = getattr(msg, "properties", None)
            self._events.append(("message", (msg.topic, bytes(msg.payload), props)))

    def _cb_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        if client is self.client:
            self.on_publish(mid, reason)
