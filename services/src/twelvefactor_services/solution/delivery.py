"""One delivery worker per receiver: outbox to receiver, in order per device, retried with backoff.

A refusal holds back only the device whose message was refused: its later
messages wait (order per device is kept), other devices' go on. After
`max_attempts` refusals the message is set aside as a dead letter (the store
keeps it for the operator) and the device's next message goes. Before this, one
message a strict webhook would never take (NaN in it) stopped the whole fleet's
data for that receiver.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

from twelvefactor_services import database
from twelvefactor_services.solution.envelope import backoff
from twelvefactor_services.solution.receivers import Receiver, ReceiverError
from twelvefactor_services.solution.store import Pending, Store

log = logging.getLogger("twelvefactor.solution.delivery")


# How long a copy's right to deliver lasts unrenewed: a copy killed while holding it
# delays its receiver's messages this long at most, then another copy takes over.
LEASE_TTL = 15.0


class DeliveryWorker(threading.Thread):
    """Delivers while it holds the receiver's lease, so copies never deliver twice at once.

    A failure holds the device back: its message is retried after a growing
    delay, and nothing after it from that device goes first.
    """

    def __init__(
        self,
        db_path: str | Path,
        receiver: Receiver,
        owner: str,
        stop: threading.Event,
        *,
        lease_ttl: float = LEASE_TTL,
        max_backoff: float = 30.0,
        max_attempts: int = 10,
    ) -> None:
        super().__init__(name=f"deliver-{receiver.name}", daemon=True)
        self.db_path = db_path
        self.receiver = receiver
        self.owner = owner
        self.stop_event = stop
        self.wake = threading.Event()
        self.lease_ttl = lease_ttl
        self.max_backoff = max_backoff
        self.max_attempts = max_attempts
        self.delivered = 0
        # device -> (monotonic time it may be tried again, refusals in a row)
        self.waiting: dict[str, tuple[float, int]] = {}

    def run(self) -> None:
        store = Store(self.db_path)  # a connection pool of its own (SQLite: in its thread)
        try:
            self._loop(store)
        except Exception:
            log.exception("%s: delivery worker failed", self.receiver.name)
            raise
        finally:
            with contextlib.suppress(database.Unavailable):  # else it runs out by itself
                store.release(self.receiver.name, self.owner)
            store.close()

    def _holds_lease(self, store: Store) -> bool:
        return store.lease(self.receiver.name, self.owner, time.time(), self.lease_ttl)

    def _loop(self, store: Store) -> None:
        holding = False
        while not self.stop_event.is_set():
            try:
                holding = self._step(store, holding)
            except database.Unavailable as exc:  # waits: the outbox keeps everything
                log.warning("%s: the database is out of reach: %s", self.receiver.name, exc)
                holding = False  # the lease may have run out meanwhile
                self.stop_event.wait(database.UNAVAILABLE_RETRY)

    def _step(self, store: Store, holding: bool) -> bool:
        """One look at the outbox; whether this copy holds the lease."""
        if not self._holds_lease(store):
            self.stop_event.wait(self.lease_ttl / 3)
            return False
        if not holding:
            self.receiver.reset()
        now = time.monotonic()
        self.waiting = {d: w for d, w in self.waiting.items() if w[0] > now}
        batch = store.pending(self.receiver.name, skip=self.waiting.keys())
        if not batch:
            due = min((w[0] for w in self.waiting.values()), default=now + 1.0)
            self.wake.wait(min(1.0, max(0.0, due - now)))
            self.wake.clear()
            return True
        self._deliver(store, batch)
        return True

    def _deliver(self, store: Store, batch: list[Pending]) -> None:
        """A batch to the receiver; every `receiver.group` messages made durable there
        (flush) and forgotten by the outbox in one statement. The lease is renewed as the
        batch goes (a slow receiver must not outlive it). A crash before the outbox
        forgets hands those messages over again: the archive takes them once (it reads
        its files back), a webhook (group 1) sees at most the one it was sent again."""
        taken: list[int] = []
        renewed = time.monotonic()
        for item in batch:
            if self.stop_event.is_set():
                break
            if time.monotonic() - renewed > self.lease_ttl / 3:
                if not self._holds_lease(store):
                    break
                renewed = time.monotonic()
            if item.device in self.waiting:
                continue  # refused earlier in this batch: its later messages wait
            try:
                self.receiver.deliver(item.device, item.queue_id, item.seq, item.record)
            except Exception as exc:
                self._refused(store, item.id, item.device, item.seq, exc)
                continue
            taken.append(item.id)
            if len(taken) >= self.receiver.group:
                if not self._forget(store, taken):
                    return
                taken = []
        if taken:
            self._forget(store, taken)

    def _forget(self, store: Store, taken: list[int]) -> bool:
        """Flush the receiver and forget `taken` in the outbox; False if the flush failed
        (all of them are offered again)."""
        try:
            self.receiver.flush()
        except ReceiverError as exc:  # e.g. a full disk
            log.warning(
                "%s: %d message(s) not made durable, offered again: %s",
                self.receiver.name,
                len(taken),
                exc,
            )
            self.stop_event.wait(1.0)
            return False
        store.delivered(taken)
        self.delivered += len(taken)
        return True

    def _refused(self, store: Store, item_id: int, device: str, seq: int, exc: Exception) -> None:
        attempts = store.failed(item_id, str(exc), self.max_attempts, time.time())
        if attempts == 0:
            log.error(
                "%s: %s seq %d set aside as a dead letter after %d refusals: %s",
                self.receiver.name,
                device,
                seq,
                self.max_attempts,
                exc,
            )
            return
        delay = backoff(attempts, cap=self.max_backoff)
        self.waiting[device] = (time.monotonic() + delay, attempts)
        log.warning(
            "%s: %s seq %d not delivered (attempt %d, retry in %.1f s): %s",
            self.receiver.name,
            device,
            seq,
            attempts,
            delay,
            exc,
        )
