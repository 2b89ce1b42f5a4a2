"""Solution service: dedup, the archive, a failing webhook, crashes and restarts."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import api_certificate
from twelvefactor_services import database as databases
from twelvefactor_services.mqtt import Endpoint, Identity
from twelvefactor_services.solution.cli import main as solution_cli
from twelvefactor_services.solution.delivery import LEASE_TTL
from twelvefactor_services.solution.envelope import parse_envelope
from twelvefactor_services.solution.receivers import ArchiveReceiver, ReceiverError, read_archive
from twelvefactor_services.solution.service import SolutionConfig, SolutionService
from twelvefactor_services.solution.store import VERSION_TABLE, Store

from testbed.pace import PACE, ROUND_TRIP
from testbed.postgres import Postgres
from testbed.probe import Probe
from testbed.stack import ServiceProcess, Stack, wait_until

MakeProbe = Callable[..., Probe]


QUEUE = "0123456789abcdef"  # the queue_id of the fake devices' queue


def envelope(device: str, seq: int, stream: str = "temperature") -> dict[str, Any]:
    data = json.dumps({"t": 20 + seq / 10}).encode()
    return {
        "v": 1,
        "device": device,
        "queue_id": QUEUE,
        "seq": seq,
        "stream": stream,
        "ts": time.time(),
        "payload": base64.b64encode(data).decode(),
    }


def sensor(stack: Stack, probes: MakeProbe, device: str) -> Probe:
    return probes(
        stack.solution_endpoint,
        stack.device(device),
        f"{device}-sol",
        clean_start=False,
        session_expiry=7 * 86400,
    )


def send(dev: Probe, device: str, seqs: range | list[int]) -> None:
    for seq in seqs:
        dev.publish(f"sol/{device}/up/data/temperature", envelope(device, seq))


def archived(stack: Stack, device: str) -> list[int]:
    # whole lines only: the service may be writing one as the test reads
    return [r["seq"] for r in read_archive(stack.archive_dir / f"{device}.jsonl")]


def wait_archived(stack: Stack, device: str, expected: list[int]) -> None:
    wait_until(lambda: archived(stack, device) == expected, what=f"archive of {device}")


@pytest.fixture
def solution(stack: Stack) -> ServiceProcess:
    svc = stack.solution(max_backoff=2.0)
    svc.start()
    return svc


class Webhook:
    """A local receiver that answers 500 while ``failing`` is set, and records what it took."""

    def __init__(self, refuse: Callable[[dict[str, Any]], bool] = lambda _m: False) -> None:
        self.failing = threading.Event()
        self.taken: list[dict[str, Any]] = []
        self.refused = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.failing.is_set():
                    hook.refused += 1
                    self.send_response(500)
                elif refuse(json.loads(body)):  # a strict receiver: this one, never
                    hook.refused += 1
                    self.send_response(400)
                else:
                    hook.taken.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def seqs(hook: Webhook) -> list[int]:
    return [m["seq"] for m in hook.taken]


def at_most_one_repeat(got: list[int], last: int) -> list[int]:
    """1..last in order, given at least once: a crash between a POST and its outbox
    delete repeats that one message, right after it (a webhook's group is 1). The
    repeated seqs, at most one."""
    distinct = [seq for i, seq in enumerate(got) if i == 0 or seq != got[i - 1]]
    assert distinct == list(range(1, last + 1)), got
    repeated = [seq for i, seq in enumerate(got) if i > 0 and seq == got[i - 1]]
    assert len(repeated) <= 1, got
    return repeated


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


def test_duplicates_are_archived_once(
    stack: Stack, solution: ServiceProcess, probes: MakeProbe, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = sensor(stack, probes, "dev-101")
    send(dev, "dev-101", [1, 2, 3, 2, 3, 1, 4])
    wait_archived(stack, "dev-101", [1, 2, 3, 4])
    lines = (stack.archive_dir / "dev-101.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["device"] == "dev-101" and first["stream"] == "temperature"
    assert json.loads(base64.b64decode(first["payload"])) == {"t": 20.1}
    assert first["received_ts"] >= first["ts"] - 5
    assert solution.log_file.read_text().count("duplicate dev-101") == 3
    assert solution_cli(["archive", "--archive-dir", str(stack.archive_dir)]) == 0
    assert "dev-101" in capsys.readouterr().out
    args = ["archive", "--archive-dir", str(stack.archive_dir), "--device", "dev-101"]
    assert solution_cli(args) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 4
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d  seq 1  temperature  \{.*\}", shown[0]
    )
    assert shown[0].endswith('{"t": 20.1}'), shown[0]  # the payload decoded: it is text
    assert solution_cli([*args, "--json"]) == 0
    assert [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()] == [1, 2, 3, 4]


def test_invalid_envelopes_are_dropped(
    stack: Stack, solution: ServiceProcess, probes: MakeProbe
) -> None:
    dev = sensor(stack, probes, "dev-102")
    topic = "sol/dev-102/up/data/temperature"
    bad: list[bytes | dict[str, Any]] = [
        b"not json",
        {**envelope("dev-102", 1), "v": 2},
        {**envelope("dev-102", 1), "device": "dev-999"},
        {**envelope("dev-102", 1), "seq": True},
        {**envelope("dev-102", 1), "seq": -1},
        {**envelope("dev-102", 1), "seq": "1"},
        {**envelope("dev-102", 1), "stream": "other"},
        {**envelope("dev-102", 1), "payload": "not base64!"},
        {k: v for k, v in envelope("dev-102", 1).items() if k != "ts"},
    ]
    for payload in bad:
        dev.publish(topic, payload)
    dev.publish("sol/dev-102/up/data/bad stream", envelope("dev-102", 1))
    send(dev, "dev-102", [7])
    wait_archived(stack, "dev-102", [7])
    assert solution.running
    assert solution.log_file.read_text().count("dropped message from dev-102") == len(bad) + 1


def test_failing_webhook_gets_everything_in_order_and_archive_is_unaffected(
    stack: Stack, probes: MakeProbe, webhook: Webhook
) -> None:
    webhook.failing.set()
    svc = stack.solution(webhook=webhook.url, max_backoff=2.0)
    svc.start()
    dev = sensor(stack, probes, "dev-103")
    started = time.monotonic()
    send(dev, "dev-103", range(1, 21))
    wait_archived(stack, "dev-103", list(range(1, 21)))  # while the webhook still fails
    archived_in = time.monotonic() - started
    # three tries, the service's retry backoff (capped at max_backoff) between them
    limit = PACE.limit(ROUND_TRIP, fixed=3 * 2.0)
    wait_until(lambda: webhook.refused >= 3, limit, "webhook retried")
    assert webhook.taken == []
    webhook.failing.clear()
    limit = PACE.limit(ROUND_TRIP, fixed=2.0)  # the retry backoff once more, at the most
    wait_until(lambda: len(webhook.taken) >= 20, limit, "webhook caught up")
    # One more message: the worker delivers a device's backlog in seq order, so a
    # duplicate of 1-20 still to come would reach the webhook before 21 does.
    send(dev, "dev-103", [21])
    deadline = max(PACE.limit(ROUND_TRIP), 10 * archived_in)
    try:
        wait_until(lambda: any(m["seq"] == 21 for m in webhook.taken), deadline, "seq 21")
    except TimeoutError:
        pytest.fail(f"no seq 21 within {deadline:.0f} s; the webhook took {seqs(webhook)}")
    assert seqs(webhook) == list(range(1, 22))
    assert all(m["device"] == "dev-103" and "received_ts" in m for m in webhook.taken)
    wait_archived(stack, "dev-103", list(range(1, 22)))


def test_nothing_lost_while_the_service_is_down_or_killed(stack: Stack, probes: MakeProbe) -> None:
    svc = stack.solution(max_backoff=2.0)
    svc.start()
    dev = sensor(stack, probes, "dev-104")
    send(dev, "dev-104", range(1, 11))
    wait_archived(stack, "dev-104", list(range(1, 11)))
    svc.stop()
    send(dev, "dev-104", range(11, 21))  # kept in the service's broker session
    svc.start()
    wait_archived(stack, "dev-104", list(range(1, 21)))
    # A crash in the middle of a burst, and the device resending what it is unsure of.
    send(dev, "dev-104", range(21, 41))
    svc.kill()
    send(dev, "dev-104", range(41, 51))
    svc.start()
    send(dev, "dev-104", range(31, 51))
    wait_archived(stack, "dev-104", list(range(1, 51)))


def test_two_copies_on_one_database_deliver_every_message_once_through_a_kill9(
    database: str,
    tmp_path: Path,
    run_stack: Callable[[Stack], Stack],
    probes: MakeProbe,
    webhook: Webhook,
) -> None:
    """Issue 15: two copies of the solution service on one database (SQLite, the
    embedded default, and PostgreSQL), one killed with SIGKILL in the middle of a burst:
    every message is archived exactly once and given to the webhook in order, at least
    once: the POST in flight when the copy died may come again, once, and nothing else
    (the copies both take every message; the database decides which one stores it, and
    the receivers' leases which copy delivers; docs/services.md, "webhook")."""
    stack = run_stack(Stack(tmp_path / "stack", solution_database=database))
    first = stack.solution(webhook=webhook.url, max_backoff=2.0)
    second = stack.solution(webhook=webhook.url, max_backoff=2.0)
    first.start()
    second.start()
    dev = sensor(stack, probes, "dev-107")
    send(dev, "dev-107", range(1, 21))
    first.kill()  # no goodbye: its leases run out, the other copy takes over
    send(dev, "dev-107", range(21, 41))
    # the leases' timer, then the other copy's next look (a third of it) and the work
    deadline = PACE.limit(4 * ROUND_TRIP, LEASE_TTL * 4 / 3)
    wait_until(
        lambda: archived(stack, "dev-107") == list(range(1, 41)), deadline, "the archive's 40"
    )
    wait_until(lambda: len(set(seqs(webhook))) >= 40, deadline, "the webhook's 40 messages")
    time.sleep(PACE.limit(ROUND_TRIP))  # a second delivery would come now
    repeated = at_most_one_repeat(seqs(webhook), 40)
    first.start()  # back: nothing is delivered twice
    send(dev, "dev-107", range(35, 46))  # a device resending what it is unsure of
    wait_until(
        lambda: archived(stack, "dev-107") == list(range(1, 46)), deadline, "the archive's 45"
    )
    wait_until(lambda: len(set(seqs(webhook))) >= 45, deadline, "the webhook's 45 messages")
    time.sleep(PACE.limit(ROUND_TRIP))
    assert at_most_one_repeat(seqs(webhook), 45) == repeated  # none since the kill's
    store = Store(database)
    assert store.counts() == {"accepted": 45}
    store.close()


def test_archive_is_exactly_once_across_a_restart(stack: Stack, probes: MakeProbe) -> None:
    svc = stack.solution()
    svc.start()
    dev = sensor(stack, probes, "dev-105")
    send(dev, "dev-105", range(1, 6))
    wait_archived(stack, "dev-105", [1, 2, 3, 4, 5])
    svc.stop()
    # Forget the dedup table: only the archive's own check stands between us and a duplicate.
    for suffix in ("", "-wal", "-shm"):
        Path(f"{stack.solution_db}{suffix}").unlink(missing_ok=True)
    svc.start()
    send(dev, "dev-105", range(1, 8))
    wait_archived(stack, "dev-105", [1, 2, 3, 4, 5, 6, 7])


def test_archive_receiver_skips_what_it_already_wrote_and_repairs_a_torn_line(
    tmp_path: Path,
) -> None:
    first = ArchiveReceiver(tmp_path)
    for seq in (1, 2):
        first.deliver("dev-1", "", seq, json.dumps({"seq": seq}))
    # A new process (restart) redelivers seq 2: the file already has it.
    path = tmp_path / "dev-1.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"seq": 3, "pay')  # a crash in the middle of writing seq 3
    again = ArchiveReceiver(tmp_path)
    for seq in (2, 3):
        again.deliver("dev-1", "", seq, json.dumps({"seq": seq}))
    assert [json.loads(x)["seq"] for x in path.read_text().splitlines()] == [1, 2, 3]
    with pytest.raises(ValueError):
        again.path("../etc")


def test_archive_lines_are_made_durable_by_flush_and_offered_again_when_it_fails(
    tmp_path: Path,
) -> None:
    """Issue 15: the archive fsyncs each file once per group of deliveries (flush), not
    once per line; the outbox forgets only what a flush made durable. A flush that fails
    (here the file is gone under it) is a ReceiverError, and what it held is taken again."""
    receiver = ArchiveReceiver(tmp_path)
    for seq in (1, 2):
        receiver.deliver("dev-1", "", seq, json.dumps({"seq": seq}))
    receiver.deliver("dev-2", "", 1, json.dumps({"seq": 1}))
    receiver.flush()
    assert read_archive(tmp_path / "dev-1.jsonl") == [{"seq": 1}, {"seq": 2}]
    receiver.flush()  # nothing new: nothing to do
    receiver.deliver("dev-2", "", 2, json.dumps({"seq": 2}))
    (tmp_path / "dev-2.jsonl").unlink()
    with pytest.raises(ReceiverError, match="archive write failed"):
        receiver.flush()
    for seq in (1, 2):  # the outbox offers both again: the file is read back, not trusted
        receiver.deliver("dev-2", "", seq, json.dumps({"seq": seq}))
    receiver.flush()
    assert read_archive(tmp_path / "dev-2.jsonl") == [{"seq": 1}, {"seq": 2}]


def test_archive_receiver_streams_a_large_file_instead_of_reading_it_whole(
    tmp_path: Path,
) -> None:
    """Issue 19, finding 4: the receiver read a device's whole archive into memory."""
    path = tmp_path / "dev-1.jsonl"
    pad = "x" * 2000
    with open(path, "w") as f:
        for seq in range(1, 20_001):  # about 40 MB
            f.write(json.dumps({"seq": seq, "pad": pad}) + "\n")
        f.write('{"seq": 20001, "pa')  # and a torn last line
    receiver = ArchiveReceiver(tmp_path)
    tracemalloc.start()
    try:
        receiver.deliver("dev-1", "", 20_000, json.dumps({"seq": 20_000}))  # a redelivery
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while reading a 40 MB archive"
    receiver.deliver("dev-1", "", 20_001, json.dumps({"seq": 20_001}))
    lines = path.read_bytes().splitlines()
    assert len(lines) == 20_001 and json.loads(lines[-1]) == {"seq": 20_001}


def test_store_dedups_in_one_transaction_and_leases_one_deliverer(database: str) -> None:
    env = parse_envelope("dev-1", ("data", "s"), json.dumps(envelope("dev-1", 1, "s")).encode())
    a, b = Store(database), Store(database)
    assert a.accept(env, 1.0, ["archive", "webhook"]) is True
    assert b.accept(env, 2.0, ["archive", "webhook"]) is False
    assert a.counts() == {"accepted": 1, "pending.archive": 1, "pending.webhook": 1}
    [item] = b.pending("webhook")
    assert json.loads(item.record)["received_ts"] == 1.0
    b.delivered([item.id])
    assert a.pending("webhook") == []
    assert a.lease("archive", "copy-a", now=100.0, ttl=10.0)
    assert not b.lease("archive", "copy-b", now=105.0, ttl=10.0)
    assert a.lease("archive", "copy-a", now=105.0, ttl=10.0)  # renewal
    assert b.lease("archive", "copy-b", now=116.0, ttl=10.0)  # expired: taken over
    assert not a.lease("archive", "copy-a", now=117.0, ttl=10.0)
    # refusals counted, then the message set aside; the device's next one may go
    [first] = a.pending("archive")
    a.delivered([first.id])
    env2 = parse_envelope("dev-1", ("data", "s"), json.dumps(envelope("dev-1", 2, "s")).encode())
    assert a.accept(env2, 3.0, ["archive"]) is True
    [item] = a.pending("archive", skip=["dev-9"])
    assert a.pending("archive", skip=["dev-1"]) == []
    assert a.failed(item.id, "refused", max_attempts=2, now=200.0) == 1
    assert b.failed(item.id, "refused again", max_attempts=2, now=201.0) == 0
    assert a.pending("archive") == []
    [letter] = b.dead_letters()
    assert (letter["device"], letter["seq"], letter["attempts"]) == ("dev-1", 2, 2)
    assert (letter["last_error"], letter["set_aside"]) == ("refused again", 201.0)
    assert a.counts() == {"accepted": 2, "dead.archive": 1}
    # the consumer's group: several publishes in one transaction, each one's new count
    three = [
        parse_envelope("dev-2", ("data", "s"), json.dumps(envelope("dev-2", n, "s")).encode())
        for n in (1, 2, 3)
    ]
    assert a.accept_many([three[:2], [env2], three[1:]], 4.0, ["archive"]) == [2, 0, 1]
    assert [p.seq for p in a.pending("archive")] == [1, 2, 3]
    a.delivered([p.id for p in a.pending("archive")])
    assert a.counts() == {"accepted": 5, "dead.archive": 1}
    b.release("archive", "copy-b")
    assert a.lease("archive", "copy-a", now=118.0, ttl=10.0)  # released: free at once
    a.close()
    b.close()


def test_full_stack_fixture_serves_both_sides(
    stack: Stack, services: tuple[ServiceProcess, ServiceProcess], probes: MakeProbe
) -> None:
    management, solution = services
    assert management.running and solution.running
    dev = sensor(stack, probes, "dev-106")
    send(dev, "dev-106", [1])
    wait_archived(stack, "dev-106", [1])


def test_a_message_the_webhook_never_takes_holds_back_only_its_device_then_is_set_aside(
    stack: Stack, probes: MakeProbe
) -> None:
    """Issue 19, finding 3: delivery was in order across all devices, so one message a
    strict webhook refused forever stopped every device's data for it."""
    hook = Webhook(refuse=lambda m: (m["device"], m["seq"]) == ("dev-107", 2))
    try:
        svc = stack.solution(webhook=hook.url, max_backoff=0.5, max_attempts=3)
        svc.start()
        bad, good = sensor(stack, probes, "dev-107"), sensor(stack, probes, "dev-108")
        send(bad, "dev-107", [1, 2, 3])
        wait_until(lambda: hook.refused >= 1, what="the first refusal")
        send(good, "dev-108", range(1, 6))
        # Another device's data goes on while dev-107's seq 2 waits for its retry.
        wait_until(
            lambda: [m["seq"] for m in hook.taken if m["device"] == "dev-108"] == [1, 2, 3, 4, 5],
            what="dev-108 delivered",
        )
        # After three refusals seq 2 is set aside and seq 3 follows, in order.
        wait_until(
            lambda: [m["seq"] for m in hook.taken if m["device"] == "dev-107"] == [1, 3],
            PACE.limit(ROUND_TRIP, fixed=3 * 0.5),  # three tries, max_backoff apart at most
            "dev-107 seq 3 after seq 2 was set aside",
        )
        assert hook.refused == 3
        wait_archived(stack, "dev-107", [1, 2, 3])  # the archive has it all
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "twelvefactor_services.solution.cli",
                "dead-letters",
                "--db",
                str(stack.solution_db),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        letters = [json.loads(line) for line in out.splitlines()]
        assert [(d["receiver"], d["device"], d["seq"], d["attempts"]) for d in letters] == [
            ("webhook", "dev-107", 2, 3)
        ]
        assert "400" in letters[0]["last_error"]
        assert json.loads(letters[0]["record"])["seq"] == 2
        assert (
            "dev-107 seq 2 set aside as a dead letter after 3 refusals" in svc.log_file.read_text()
        )
    finally:
        hook.server.shutdown()
        hook.server.server_close()


def test_a_store_of_the_old_schema_is_migrated(tmp_path: Path) -> None:
    """Before queue ids the store deduplicated on (device, seq): its rows move over."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "s.db")
    db.executescript(
        """
        CREATE TABLE messages (device TEXT NOT NULL, seq INTEGER NOT NULL, stream TEXT NOT NULL,
            ts REAL NOT NULL, received_ts REAL NOT NULL, PRIMARY KEY (device, seq)) WITHOUT ROWID;
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, receiver TEXT NOT NULL,
            device TEXT NOT NULL, seq INTEGER NOT NULL, record TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, UNIQUE (receiver, device, seq));
        INSERT INTO messages VALUES ('dev-1', 7, 's', 1.0, 2.0);
        INSERT INTO outbox (receiver, device, seq, record) VALUES ('webhook', 'dev-1', 7, '{}');
        """
    )
    db.close()
    store = Store(tmp_path / "s.db")
    assert databases.revision(store.db, VERSION_TABLE) == "0001"  # adopted by the migrations
    assert [(p.device, p.queue_id, p.seq) for p in store.pending("webhook")] == [("dev-1", "", 7)]
    env = parse_envelope("dev-1", ("data", "s"), json.dumps(envelope("dev-1", 7, "s")).encode())
    assert store.accept(env, 3.0, ["webhook"]) is True  # the same seq of a new queue is new
    assert store.accept(env, 4.0, ["webhook"]) is False
    assert store.counts() == {"accepted": 2, "pending.webhook": 2}
    store.close()
    assert Store(tmp_path / "s.db").counts()["accepted"] == 2  # and opens again as it is


def test_data_sent_while_the_database_is_out_of_reach_is_archived_once_it_is_back(
    tmp_path: Path,
    run_stack: Callable[[Stack], Stack],
    probes: MakeProbe,
    postgres: Postgres,
) -> None:
    """Issue 15 (the consumer writes in groups): the solution service on PostgreSQL, the
    database refusing every connection for a while. The group being stored waits
    unacknowledged, the delivery worker waits too (it used to die with the first
    database error), and once the database is back every message is archived once."""
    database = postgres.new_database()
    stack = run_stack(Stack(tmp_path / "stack", solution_database=database))
    svc = stack.solution(max_backoff=2.0)
    svc.start()
    dev = sensor(stack, probes, "dev-109")
    send(dev, "dev-109", range(1, 11))
    wait_archived(stack, "dev-109", list(range(1, 11)))
    postgres.set_connections(database, allowed=False)
    try:
        send(dev, "dev-109", range(11, 31))
        waiting = ("the database is out of reach, ", "archive: the database is out of reach")
        wait_until(
            lambda: all(w in svc.log_file.read_text() for w in waiting),
            what="the consumer and the delivery worker waiting for the database",
        )
    finally:
        postgres.set_connections(database, allowed=True)
    send(dev, "dev-109", range(31, 41))
    wait_archived(stack, "dev-109", list(range(1, 41)))
    assert svc.running, "the service stopped"
    store = Store(database)
    assert store.counts() == {"accepted": 40}
    store.close()


class StoreFailingOn(SolutionService):
    """The real service, whose store fails on one device's messages (a fault injected: the
    envelopes are checked before the database, so no real message is known to fail)."""

    def handle_many(self, messages: Sequence[tuple[str, bytes]]) -> int:
        if any("/dev-bad/" in topic for topic, _ in messages):
            raise RuntimeError("the store refuses this")
        return super().handle_many(messages)


def test_a_group_is_stored_at_once_and_a_message_refused_alone_stops_the_service(
    tmp_path: Path,
) -> None:
    """The inbox (issue 15): a group in one transaction; a group the store refuses is
    stored one message at a time, and the one refused alone stops the service with the
    group unacknowledged (its messages before it are stored, the broker hands the group
    over again to the restart, which takes them as duplicates)."""
    cert, key, ca = api_certificate(tmp_path / "pki")
    svc = StoreFailingOn(
        SolutionConfig(
            db=tmp_path / "solution.db",
            identity=Identity(cert, key, ca),
            broker=Endpoint("127.0.0.1", 1),  # never connected: the messages are given below
            group=None,
            receivers=[ArchiveReceiver(tmp_path / "archive")],
        )
    )

    def message(device: str, seq: int) -> mqtt.MQTTMessage:
        msg = mqtt.MQTTMessage(mid=seq, topic=f"sol/{device}/up/data/temperature".encode())
        msg.payload = json.dumps(envelope(device, seq)).encode()
        return msg

    assert svc.inbox.write([message("dev-1", n) for n in range(1, 6)])
    assert not svc.failed
    refused = [message("dev-2", 1), message("dev-2", 2), message("dev-bad", 1), message("dev-2", 3)]
    assert not svc.inbox.write(refused)
    assert svc.failed and svc.stop_requested.is_set()
    assert svc.store is not None
    assert svc.store.counts() == {"accepted": 7, "pending.archive": 7}  # dev-2's 3 not tried
    svc.store.close()
