"""The solution session: forwards the queue, in seq order, through a bounded window."""

from __future__ import annotations

import random
import time

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from . import payloads
from .config import Config
from .mqtt import LastError, MqttSession, StateCallback
from .queue import Queue, QueueUnavailable
from .window import ForwardWindow

WINDOW = 100
# After a queue error, retry the queue no sooner than this.
QUEUE_RETRY = 2.0
# Delivered rows are deleted in groups: a delete is not urgent (the window
# moves on a cursor, not on deletions) and one transaction per group instead
# of one per network read keeps the forwarder fast. At most this many rows,
# or this many seconds, wait; a row whose delete is lost is only resent.
DELETE_GROUP = 2000
DELETE_DELAY = 0.5


class SolutionSession(MqttSession):
    name_suffix = "sol"
    window = WINDOW

    def __init__(
        self,
        config: Config,
        queue: Queue,
        on_state: StateCallback,
        last_error: LastError,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__("solution", config, config.solution, on_state, last_error, rng)
        self.queue = queue  # this thread's own connection (synchronous=NORMAL)
        self.forward = ForwardWindow(WINDOW)
        self._delivered: list[int] = []
        self._refused: list[int] = []
        self._queue_retry_at = 0.0
        self._delete_due: float | None = None

    def on_up(self, client: mqtt.Client) -> None:
        self.forward.reset()

    def on_down(self) -> None:
        # Settle what was delivered before rewinding, or it would be sent again.
        self.on_stopped()
        self.forward.reset()

    def on_publish(self, mid: int, reason: ReasonCode) -> None:
        seq = self.forward.acked(mid)
        if seq is None:
            return
        if reason.is_failure:
            # The broker will never take it (ACL, size): retrying would block the queue.
            self._fail(f"solution: broker refused seq {seq}: {reason}; dropped")
            self._refused.append(seq)
            self._delete_due = time.monotonic()
        else:
            self._delivered.append(seq)

    def after_io(self, now: float) -> float | None:
        if now < self._queue_retry_at:
            return self._queue_retry_at
        try:
            self._pump()
            if self._delivered and self._delete_due is None:
                self._delete_due = now + DELETE_DELAY
            if self._delete_due is not None and (
                now >= self._delete_due
                or len(self._delivered) >= DELETE_GROUP
                or not self.forward.in_flight
            ):
                self.flush_deletes()
        except QueueUnavailable as exc:
            self._fail(f"solution: queue: {exc}")
            self._queue_retry_at = now + QUEUE_RETRY
            return self._queue_retry_at
        return self._delete_due

    def flush_deletes(self) -> None:
        if self._delivered:
            self.queue.remove(self._delivered)
            self._delivered = []
        if self._refused:
            self.queue.remove(self._refused, dropped=True)
            self._refused = []
        self._delete_due = None

    def on_stopped(self) -> None:
        try:
            self.flush_deletes()
        except QueueUnavailable as exc:
            self._fail(f"solution: queue: {exc}")

    def _pump(self) -> None:
        client = self.client
        while client is not None and self.online and self.forward.room() > 0:
            wanted = self.forward.room()
            batch = self.queue.pending(self.forward.cursor, wanted)
            for message in batch:
                info = client.publish(
                    payloads.data_topic(self.device, message.stream),
                    payloads.data_envelope(self.device, message),
                    qos=1,
                )
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    return  # the connection is going down; the disconnect event follows
                self.forward.sent(message.seq, info.mid)
            if len(batch) < wanted:
                return  # the queue is drained
            client = self.client
