"""The solution session: forwards the queue, in seq order, through a bounded window.

It also carries proxy calls: a request goes out on `sol/<id>/up/proxy` with
the MQTT 5 response topic `sol/<id>/down/proxy`, the call's id as correlation
data and the call's timeout as message expiry (a request that waits in the
broker longer than anyone waits for its answer is dropped there, never
executed late). The session keeps no call table: the local API's
(localapi/calltable.py) is the only one, with the only deadline. The session
reports every answer it receives and, when a connection ends, that the calls
out on it are lost (calls are not stored for retry: they fail with
`unavailable`). Each connection gets a route number so that report fails
exactly the calls that went out on it.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from twelvefactor_agent.config.settings import Config
from twelvefactor_agent.forward.queue import Queue, QueueUnavailable
from twelvefactor_agent.forward.window import ForwardWindow
from twelvefactor_agent.localapi.calltable import CallEvent, Lost, Reply
from twelvefactor_agent.localapi.proxycall import parse_answer, refusal
from twelvefactor_agent.protocol import batch, topics
from twelvefactor_agent.session.mqtt import LastError, MqttSession, StateCallback

WINDOW = 100
# After a queue error, retry the queue no sooner than this.
QUEUE_RETRY = 2.0
# Delivered rows are deleted in groups: a delete is not urgent (the window
# moves on a cursor, not on deletions) and one transaction per group instead
# of one per network read keeps the forwarder fast. At most this many rows,
# or this many seconds, wait; a row whose delete is lost is only resent.
DELETE_GROUP = 2000
DELETE_DELAY = 0.5
# Route numbers, unique over the process (sessions are replaced on reconfiguration).
_ROUTES = itertools.count(1)


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
        *,
        report_call: Callable[[CallEvent], None] = lambda event: None,
    ) -> None:
        super().__init__("solution", config, config.solution, on_state, last_error, rng)
        self._report_call = report_call
        # The connection calls go out on now (0: none yet); set on the session thread.
        self.route = 0
        # mid -> call id until PUBACK, to tell a refused call from a refused message.
        self._call_mids: dict[int, bytes] = {}
        self.queue = queue  # this thread's own connection (synchronous=NORMAL)
        self.forward = ForwardWindow(WINDOW)
        self._delivered: list[int] = []
        self._refused: list[int] = []
        self._queue_retry_at = 0.0
        self._delete_due: float | None = None

    @property
    def online(self) -> bool:
        """Connected, and its route taken: the state machine says CONNECTED a moment
        before on_up runs, and a call in that moment had no route to go out on."""
        return super().online and self.route != 0

    def on_up(self, client: mqtt.Client) -> None:
        self.forward.reset()
        self.route = next(_ROUTES)

    def on_down(self) -> None:
        self._lose_calls("the connection to the solution service was lost")
        self.route = 0
        # Settle what was delivered before rewinding, or it would be sent again.
        self._settle_deletes()
        self.forward.reset()

    def subscriptions(self) -> list[str]:
        return [topics.sol_down(self.device, "#")]

    # -- proxy calls ---------------------------------------------------------------

    def send_call(self, call_id: bytes, request: bytes, timeout: float) -> int | None:
        """Publish a proxy call (from any thread): the route it goes out on, None if offline.

        Its answer, or its loss with the route, comes through report_call."""
        route = self.route
        if not self.online or not route:
            return None
        self.call_soon(lambda: self._send_call(call_id, request, timeout, route))
        return route

    def _send_call(self, call_id: bytes, request: bytes, timeout: float, route: int) -> None:
        client = self.client
        if client is None or not self.online or route != self.route:
            # Its connection went down meanwhile (and Lost was reported, or will be).
            answer = refusal("unavailable", "the solution service is not connected")
            self._report_call(Reply(call_id, answer))
            return
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = topics.sol_down(self.device, "proxy")
        props.CorrelationData = call_id
        props.MessageExpiryInterval = max(1, math.ceil(timeout))
        info = client.publish(topics.sol_up(self.device, "proxy"), request, qos=1, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            answer = refusal("unavailable", "the solution service is not connected")
            self._report_call(Reply(call_id, answer))
            return
        self._call_mids[info.mid] = call_id

    def on_message(self, topic: str, payload: bytes, properties: Properties | None) -> None:
        if topic != topics.sol_down(self.device, "proxy"):
            self.log.warning("dropped a message on %s: not a topic this agent handles", topic)
            return
        call_id = getattr(properties, "CorrelationData", None)
        if not isinstance(call_id, bytes):
            self.log.info("dropped a proxy answer without correlation data")
            return
        # The call table matches it (or drops it: late, or not ours).
        self._report_call(Reply(call_id, parse_answer(payload)))

    def _lose_calls(self, why: str) -> None:
        if self.route:
            self._report_call(Lost(self.route, why))
        self._call_mids.clear()

    # -- forwarding ----------------------------------------------------------------

    def on_publish(self, mid: int, reason: ReasonCode) -> None:
        call_id = self._call_mids.pop(mid, None)
        if call_id is not None:
            if reason.is_failure:
                answer = refusal("unavailable", f"the broker refused the call: {reason}")
                self._report_call(Reply(call_id, answer))
            return
        seqs = self.forward.acked(mid)
        if seqs is None:
            return
        if reason.is_failure:
            # The broker will never take it (ACL, size): retrying would block the queue.
            shown = f"{seqs[0]}" if len(seqs) == 1 else f"{seqs[0]}-{seqs[-1]}"
            self._fail(f"solution: broker refused seq {shown}: {reason}; dropped")
            self._refused.extend(seqs)
            self._delete_due = time.monotonic()
        else:
            self._delivered.extend(seqs)

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
        self._lose_calls("the agent is restarting its sessions")
        self._settle_deletes()

    def _settle_deletes(self) -> None:
        try:
            self.flush_deletes()
        except QueueUnavailable as exc:
            self._fail(f"solution: queue: {exc}")

    def _pump(self) -> None:
        client = self.client
        while client is not None and self.online and self.forward.room() > 0:
            wanted = self.forward.room()
            pending = self.queue.pending(self.forward.cursor, wanted)
            for run in batch.runs(pending):
                info = client.publish(
                    topics.data(self.device, run[0].stream),
                    batch.encode(self.queue.incarnation, [(m.seq, m.ts, m.payload) for m in run]),
                    qos=1,
                )
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    return  # the connection is going down; the disconnect event follows
                self.forward.sent(tuple(m.seq for m in run), info.mid)
            if len(pending) < wanted:
                return  # the queue is drained
            client = self.client
