"""One delivery worker per receiver: outbox to receiver, in order, retried with backoff."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from twelvefactor_services.solution.envelope import backoff
from twelvefactor_services.solution.receivers import Receiver
from twelvefactor_services.solution.store import Store

log = logging.getLogger("twelvefactor.solution.delivery")


class DeliveryWorker(threading.Thread):
    """Delivers while it holds the receiver's lease, so copies never deliver twice at once.

    A failure stops the batch: the same message is retried after a growing
    delay, and nothing after it (for that receiver) goes first.
    """

    def __init__(
        self,
        db_path: Path,
        receiver: Receiver,
        owner: str,
        stop: threading.Event,
        *,
        lease_ttl: float = 15.0,
        max_backoff: float = 30.0,
    ) -> None:
        super().__init__(name=f"deliver-{receiver.name}", daemon=True)
        self.db_path = db_path
        self.receiver = receiver
        self.owner = owner
        self.stop_event = stop
        self.wake = threading.Event()
        self.lease_ttl = lease_ttl
        self.max_backoff = max_backoff
        self.delivered = 0

    def run(self) -> None:
        store = Store(self.db_path)  # SQLite connections stay in their thread
        try:
            self._loop(store)
        except Exception:
            log.exception("%s: delivery worker failed", self.receiver.name)
            raise
        finally:
            store.release(self.receiver.name, self.owner)
            store.close()

    def _holds_lease(self, store: Store) -> bool:
        return store.lease(self.receiver.name, self.owner, time.time(), self.lease_ttl)

    def _loop(self, store: Store) -> None:
        holding = False
        attempt = 0
        while not self.stop_event.is_set():
            if not self._holds_lease(store):
                holding = False
                self.stop_event.wait(self.lease_ttl / 3)
                continue
            if not holding:
                self.receiver.reset()
                holding = True
            batch = store.pending(self.receiver.name)
            if not batch:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            for item in batch:
                if self.stop_event.is_set() or not self._holds_lease(store):
                    break
                try:
                    self.receiver.deliver(item.device, item.seq, item.record)
                except Exception as exc:
                    attempt += 1
                    delay = backoff(attempt, cap=self.max_backoff)
                    store.failed(item.id, str(exc))
                    log.warning(
                        "%s: %s seq %d not delivered (attempt %d, retry in %.1f s): %s",
                        self.receiver.name,
                        item.device,
                        item.seq,
                        attempt,
                        delay,
                        exc,
                    )
                    self.stop_event.wait(delay)
                    break
                store.delivered(item.id)
                self.delivered += 1
                if attempt:
                    log.info("%s: delivering again after %d failures", self.receiver.name, attempt)
                    attempt = 0
