"""What a service's broker session delivered, written by one thread in groups and
acknowledged to the broker only after (paho's manual acknowledgements), for the
management and the solution service alike.

Each group is what arrived while the last one was written (at most `most`), given to
`store` to write in one transaction. While the database is out of reach the group waits,
unacknowledged (the broker holds the rest back), and is written when it is back: nothing
is lost to an outage. A group the store refuses is written again one message at a time,
so that a bad message costs only itself; what then becomes of that one message is the
service's word (`refused`): dropped and acknowledged, or kept unacknowledged with the
service stopping (the broker hands it over again on the restart).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt

from twelvefactor_services import database

Group = list[mqtt.MQTTMessage]


class Inbox:
    def __init__(
        self,
        client: mqtt.Client,
        store: Callable[[Group], None],
        refused: Callable[[mqtt.MQTTMessage, Exception], bool],
        stopping: threading.Event,
        log: logging.Logger,
        most: int = 200,
    ) -> None:
        """`store` writes a group in one transaction; `refused` says of a message the store
        refused on its own whether it may be acknowledged (False: the writer stops)."""
        self.client = client
        self.store = store
        self.refused = refused
        self.stopping = stopping
        self.log = log
        self.most = most
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def put(self, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def write(self, group: Group) -> bool:
        """Write `group`; whether its messages may be acknowledged."""
        while True:
            try:
                self.store(group)
                return True
            except database.Unavailable as exc:
                if self.stopping.is_set():
                    self.log.error("stopping with %d message(s) not written: %s", len(group), exc)
                    return False
                self.log.warning(
                    "the database is out of reach, %d message(s) wait: %s", len(group), exc
                )
                self.stopping.wait(database.UNAVAILABLE_RETRY)
            except Exception as exc:
                if len(group) == 1:
                    return self.refused(group[0], exc)
                self.log.warning(
                    "a group of %d messages not written (%s): one by one", len(group), exc
                )
                return all(self.write([msg]) for msg in group)  # stops at the first kept

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
            if not self.write(group):
                return  # the service stops: nothing more is taken, nothing acknowledged
            for msg in group:
                if msg.qos > 0:
                    self.client.ack(msg.mid, msg.qos)
