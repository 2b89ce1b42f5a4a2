"""The management session: online state, metadata, periodic health, configuration, shutdown.

It subscribes to `mgmt/<id>/down/#`. The desired configuration
(`down/config`) goes to the agent's configuration machine, the update job
(`down/update`) to the update worker; anything else arriving there is
dropped with a log line and changes nothing. Update reports go out on
`up/update` for the worker, which may wait for their acknowledgement.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from twelvefactor_agent import __version__
from twelvefactor_agent.config.settings import Config
from twelvefactor_agent.device import bootenv, sysinfo
from twelvefactor_agent.forward.queue import Queue
from twelvefactor_agent.protocol import topics
from twelvefactor_agent.protocol.envelope import dumps
from twelvefactor_agent.session import healthchange, payloads
from twelvefactor_agent.session.mqtt import LastError, MqttSession, StateCallback
from twelvefactor_agent.session.unheard import FIRST_RETRY, Unheard, nobody_heard
from twelvefactor_agent.util.backoff import Backoff

# The metadata each client id last published in this process, without its time stamp.
_META_SENT: dict[str, bytes] = {}


def _without_ts(meta: bytes) -> bytes:
    doc = json.loads(meta)
    doc.pop("ts", None)
    return json.dumps(doc, sort_keys=True).encode()


class ManagementSession(MqttSession):
    name_suffix = "mgmt"

    def __init__(
        self,
        config: Config,
        queue: Queue,
        on_state: StateCallback,
        last_error: LastError,
        rng: random.Random | None = None,
        *,
        on_desired: Callable[[bytes], None] = lambda raw: None,
        report: Callable[[], bytes | None] = lambda: None,
        on_update: Callable[[bytes], None] = lambda raw: None,
        on_connected: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__("management", config, config.management, on_state, last_error, rng)
        self.queue = queue  # this thread's own connection, for queue figures in health
        self._next_health: float | None = None
        self._heartbeat_due = 0.0
        self._health_sent: dict[str, object] | None = None
        self._farewell_mid: int | None = None
        self._on_desired = on_desired
        self._report = report
        self._on_update = on_update
        self._on_connected = on_connected
        # Update reports: handed over but not yet published, and published awaiting
        # their PUBACK (with the event to set, if any). A metered check-in waits for both.
        self._updates_queued = 0
        self._updates_lock = threading.Lock()
        self._acks: dict[int, threading.Event | None] = {}
        self.farewell_reason = "shutdown"
        # A metered device's goodbye says when it will be back (wall clock); set before stop().
        self.next_checkin: float | None = None
        # The service acknowledged the greeting of this connection (online, meta, health,
        # report): the retained configuration and update job came before (session/checkin.py).
        self.greeted = False
        self._greeting_mid: int | None = None
        self._meta_mid: tuple[int, bytes] | None = None  # the metadata's publish, unacked
        # Health reports awaiting their PUBACK (mid -> payload, and "new", "probe" or
        # "again"), and those the broker had no subscriber for (session/unheard.py).
        self._health_out: dict[int, tuple[bytes, str]] = {}
        probe_cap = max(FIRST_RETRY, float(config.agent.health_interval))
        self._unheard = Unheard(
            Backoff(FIRST_RETRY, 2.0, probe_cap, (rng or random.Random()).uniform)
        )

    def subscriptions(self) -> list[str]:
        return [topics.mgmt_down(self.device, "#")]

    def on_message(self, topic: str, payload: bytes, properties: Properties | None) -> None:
        if topic == topics.mgmt_down(self.device, "config"):
            self._on_desired(payload)
        elif topic == topics.mgmt_down(self.device, "update"):
            self._on_update(payload)
        else:
            self.log.warning("dropped a message on %s: not a topic this agent handles", topic)

    def publish_report(self) -> None:
        """Publish the configuration report now if online (from any thread)."""
        self.call_soon(self._publish_report)

    def _publish_report(self) -> None:
        report = self._report()
        if report is not None and self.client is not None and self.online:
            self.client.publish(self.topic("config"), report, qos=1, retain=True)

    def publish_update(self, payload: bytes, acked: threading.Event | None) -> bool:
        """Send an update report (from any thread); False if offline.

        `acked` is set when the broker acknowledges it (QoS 1).
        """
        if not self.online:
            return False

        def send() -> None:
            with self._updates_lock:
                self._updates_queued -= 1
            if self.client is None or not self.online:
                return
            info = self.client.publish(self.topic("update"), payload, qos=1)
            self._acks[info.mid] = acked

        with self._updates_lock:
            self._updates_queued += 1
        self.call_soon(send)
        return True

    @property
    def updates_pending(self) -> bool:
        """An update report is still on its way to the broker (lost if the session ends)."""
        return self._updates_queued > 0 or bool(self._acks)

    def topic(self, leaf: str) -> str:
        return topics.mgmt_up(self.device, leaf)

    def will(self) -> tuple[str, bytes]:
        return self.topic("online"), payloads.will()

    def on_up(self, client: mqtt.Client) -> None:
        self.greeted = False
        client.publish(self.topic("online"), payloads.online(time.time()), qos=1, retain=True)
        meta = self.meta()
        unstamped = _without_ts(meta)
        if _META_SENT.get(self.client_id) != unstamped:
            # Retained: sent again only when it changed since the broker acknowledged it
            # in this process (a connection lost before the PUBACK sends it again).
            mid = client.publish(self.topic("meta"), meta, qos=1, retain=True).mid
            self._meta_mid = (mid, unstamped)
        # Its acknowledgement comes after the retained messages the broker sent when
        # the session subscribed, just before: the greeting is done.
        self._greeting_mid = self._publish_health(client)
        self._publish_report()
        self._on_connected()

    def on_clock_set(self, client: mqtt.Client) -> None:
        # The service orders online state and metadata by the device's time
        # stamps, so what was sent on a clock that was wrong is sent again.
        client.publish(self.topic("online"), payloads.online(time.time()), qos=1, retain=True)
        client.publish(self.topic("meta"), self.meta(), qos=1, retain=True)

    def on_down(self) -> None:
        self._next_health = None
        self.greeted = False
        self._greeting_mid = None
        self._meta_mid = None
        self._acks.clear()  # what is repeated comes from the update worker (session_up)
        if any(kind == "probe" for _, kind in self._health_out.values()):
            self._unheard.lost()
        self._health_out.clear()  # the next connection is a new client, with new mids

    def after_io(self, now: float) -> float | None:
        if self._next_health is not None and now >= self._next_health and self.client is not None:
            self._sample_health(self.client, now)
        if self.client is None or not self.online:
            return self._next_health  # kept reports wait for the next connection
        probe = self._unheard.due(now)
        if probe is not None:
            self._publish_health_payload(self.client, probe, "probe")
        due = [t for t in (self._next_health, self._unheard.retry_at) if t is not None]
        return min(due, default=None)

    def farewell(self, client: mqtt.Client) -> bool:
        if self.next_checkin is not None:
            goodbye = payloads.asleep(time.time(), self.next_checkin)
        else:
            goodbye = payloads.shutdown(time.time(), self.farewell_reason)
        info = client.publish(self.topic("online"), goodbye, qos=1, retain=True)
        self._farewell_mid = info.mid
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def on_publish(self, mid: int, reason: ReasonCode) -> None:
        if mid == self._greeting_mid:
            self._greeting_mid = None
            self.greeted = True
        if self._meta_mid is not None and mid == self._meta_mid[0] and not reason.is_failure:
            _META_SENT[self.client_id] = self._meta_mid[1]
            self._meta_mid = None
        if mid == self._farewell_mid:
            self._farewell_mid = None
            self._events.append(("farewell_done", None))
        acked = self._acks.pop(mid, None)
        if acked is not None and not reason.is_failure:
            acked.set()
        health = self._health_out.pop(mid, None)
        if health is not None and not reason.is_failure:
            self._health_answered(health, reason)
        if reason.is_failure:
            self._fail(f"management: broker refused a message: {reason}")

    def _publish_health(self, client: mqtt.Client) -> int:
        """Health now (the session came up): the service learns where this device stands."""
        return self._send_health(client, self.health_fields(), time.monotonic())

    def _sample_health(self, client: mqtt.Client, now: float) -> None:
        """Health as it is now, sent if it is news or the heartbeat is due (healthchange.py)."""
        sample = self.health_fields()
        if now >= self._heartbeat_due or healthchange.changed(
            self._health_sent, sample, self.config.queue.max_bytes
        ):
            self._send_health(client, sample, now)
        else:
            self._next_health = now + self.config.agent.health_interval

    def _send_health(self, client: mqtt.Client, sample: dict[str, object], now: float) -> int:
        self._next_health = now + self.config.agent.health_interval
        self._heartbeat_due = now + self.config.agent.health_heartbeat
        self._health_sent = sample
        return self._publish_health_payload(client, dumps(sample), "new")

    def _publish_health_payload(self, client: mqtt.Client, payload: bytes, kind: str) -> int:
        mid = client.publish(self.topic("health"), payload, qos=1).mid
        self._health_out[mid] = (payload, kind)
        return mid

    def _health_answered(self, health: tuple[bytes, str], reason: ReasonCode) -> None:
        payload, kind = health
        if nobody_heard(reason):
            if not len(self._unheard):
                self.log.info("no service heard a health report: kept, sent again later")
            self._unheard.refused(payload, time.monotonic(), probe=kind == "probe")
            return
        kept = self._unheard.heard()
        if kept and self.client is not None:
            self.log.info("a service hears again: %d kept health reports sent", len(kept))
            for body in kept:
                self._publish_health_payload(self.client, body, "again")

    def meta(self) -> bytes:
        env = bootenv.read_boot_env()
        return payloads.meta(
            ts=time.time(),
            device=self.device,
            agent_version=__version__,
            os=sysinfo.os_release(),
            kernel=sysinfo.kernel(),
            machine=sysinfo.machine(),
            hardware=sysinfo.hardware(),
            slot=sysinfo.boot_slot(),
            boot=None if env is None else bootenv.boot_info(env),
        )

    def health_fields(self) -> dict[str, object]:
        return payloads.health_fields(
            ts=time.time(),
            uptime_s=sysinfo.uptime(),
            load=sysinfo.load(),
            memory=sysinfo.memory(),
            data=sysinfo.disk(self.config.agent.data_dir),
            slot=sysinfo.boot_slot(),
            os_version=sysinfo.os_release()["version"],
            agent_version=__version__,
            queue=self.queue.stats(),
            last_error=self.last_error.text,
        )
