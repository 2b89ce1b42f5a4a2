"""The management session: online state, metadata, periodic health, clean shutdown."""

from __future__ import annotations

import random
import time

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from . import __version__, bootenv, payloads, sysinfo
from .config import Config
from .mqtt import LastError, MqttSession, StateCallback
from .queue import Queue


class ManagementSession(MqttSession):
    name_suffix = "mgmt"

    def __init__(
        self,
        config: Config,
        queue: Queue,
        on_state: StateCallback,
        last_error: LastError,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__("management", config, config.management, on_state, last_error, rng)
        self.queue = queue  # this thread's own connection, for queue figures in health
        self._next_health: float | None = None
        self._farewell_mid: int | None = None

    def topic(self, leaf: str) -> str:
        return payloads.mgmt_topic(self.device, leaf)

    def will(self) -> tuple[str, bytes]:
        return self.topic("online"), payloads.will()

    def on_up(self, client: mqtt.Client) -> None:
        client.publish(self.topic("online"), payloads.online(time.time()), qos=1, retain=True)
        client.publish(self.topic("meta"), self.meta(), qos=1, retain=True)
        self._publish_health(client)

    def on_down(self) -> None:
        self._next_health = None

    def after_io(self, now: float) -> float | None:
        if self._next_health is not None and now >= self._next_health and self.client is not None:
            self._publish_health(self.client)
        return self._next_health

    def farewell(self, client: mqtt.Client) -> bool:
        info = client.publish(
            self.topic("online"), payloads.shutdown(time.time()), qos=1, retain=True
        )
        self._farewell_mid = info.mid
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def on_publish(self, mid: int, reason: ReasonCode) -> None:
        if mid == self._farewell_mid:
            self._farewell_mid = None
            self._events.append(("farewell_done", None))
        if reason.is_failure:
            self._fail(f"management: broker refused a message: {reason}")

    def _publish_health(self, client: mqtt.Client) -> None:
        self._next_health = time.monotonic() + self.config.agent.health_interval
        client.publish(self.topic("health"), self.health(), qos=1)

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

    def health(self) -> bytes:
        return payloads.health(
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
