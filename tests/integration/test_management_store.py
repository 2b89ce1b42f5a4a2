"""Issue 15: the management database on SQLite (the embedded default) and on PostgreSQL
(Debian's server, started by the tests): the same statements, the same answers, and two
service copies on one database never doing one step twice.

The tests that take `database` (tests/integration/conftest.py) run on both engines.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from helpers import api_certificate
from test_artifacts import make_swu
from twelvefactor_services import database as database_module
from twelvefactor_services.hub.peers import PeerStore
from twelvefactor_services.hub.plan import PlanError, Tunnel
from twelvefactor_services.management import (
    devicelist,
    jobstore,
    operators,
    registry,
    rolloutstore,
    store,
    tunnelstate,
)
from twelvefactor_services.management.artifacts import ArtifactStore
from twelvefactor_services.management.jobs import JobReport
from twelvefactor_services.management.logic import parse_report
from twelvefactor_services.management.rollouts import parse_spec
from twelvefactor_services.management.service import (
    ManagementConfig,
    ManagementService,
    OperatorApi,
)
from twelvefactor_services.management.store import Db
from twelvefactor_services.mqtt import Endpoint, Identity

pytestmark = pytest.mark.integration


def report(reg: registry.Registry, device: str, kind: str, body: dict[str, object]) -> None:
    reg.apply(device, parse_report(device, kind, json.dumps({"v": 1, **body}).encode()), 0.0)


def test_the_schema_is_made_once_and_a_second_copy_finds_it(database: str) -> None:
    first, second = Db(database), Db(database)  # two service copies starting
    try:
        tables = {
            "devices",
            "device_jobs",
            "rollouts",
            "operators",
            "audit",
            "tunnel_peers",
            "tunnel_liveness",
        }
        for table in tables:
            assert second.execute(f"SELECT COUNT(*) FROM {table}").scalar() == 0
        assert second.execute("SELECT version_num FROM management_schema").scalar() == "0003"
        reader = Db(database, migrate=False)  # a reader makes nothing
        assert reader.execute("SELECT COUNT(*) FROM devices").scalar() == 0
        reader.close()
    finally:
        first.close()
        second.close()


def test_reports_configuration_enrolment_and_the_feed(database: str) -> None:
    db = Db(database)
    reg = registry.Registry(db)
    try:
        reg.enrol(
            "dev-1", hardware={"board": "b", "revision": "1"}, group="field",
            tags=["site:a"], certificate_serial=0xAB, now=1.0,
        )  # fmt: skip
        report(reg, "dev-1", "online", {"online": True, "ts": 10.0})
        report(reg, "dev-1", "health", {"ts": 11.0, "uptime_s": 5, "load": [0.5, 0, 0]})
        report(reg, "dev-1", "health", {"ts": 10.5, "uptime_s": 4})  # older: not the record
        report(reg, "dev-1", "meta", {"ts": 11.0, "device": "dev-1", "os_version": "1.0"})
        shown = registry.get_device(db, "dev-1")
        assert shown is not None
        assert shown["online"] is True and shown["health_ts"] == 11.0
        assert shown["tags"] == ["site:a"] and shown["certificate_serial"] == "ab"
        # the older report joins the series all the same, in the device's time order (one
        # the broker had no subscriber for comes again after newer ones: session/unheard.py)
        series = registry.health_series(db, "dev-1")
        assert [(s["ts"], s["load1"]) for s in series] == [(10.5, None), (11.0, 0.5)]
        report(reg, "dev-h", "health", {"ts": 3.0, "os_version": "2.1"})  # its first word
        first = registry.get_device(db, "dev-h")
        assert first is not None and (first["health_ts"], first["os_version"]) == (3.0, "2.1")
        assert [s["ts"] for s in registry.health_series(db, "dev-h")] == [3.0]
        # configuration: the group's overlay gives the device version 2, published once
        assert reg.set_group_config("field", {"health": {"interval_s": 30}}, 2.0) == {"dev-1": 2}
        assert [(d, v) for d, v, _ in reg.unpublished()] == [("dev-1", 2)]
        reg.mark_published("dev-1", 2)
        reg.mark_published("dev-1", 1)  # a late acknowledgement never goes back
        assert reg.unpublished() == []
        report(reg, "dev-1", "config", {"version": 2, "status": "applied"})
        assert registry.device_config(db, "dev-1")["reported"]["status"] == "applied"
        report(reg, "dev-1", "online", {"online": False, "ts": 20.0, "reason": "power"})
        assert [h["online"] for h in registry.history(db, "dev-1")] == [True, False]
        # a job's state changes reach the feed through the database's own trigger
        job = jobstore.insert_job(db, "a" * 64, ["dev-1"], "device:dev-1", 3.0)
        jobstore.apply_report(db, "dev-1", JobReport(job, "downloading", 0, None, 4.0))
        feed = registry.events(db, None, audit=True)
        kinds = [(e["kind"], e.get("state")) for e in feed["events"]]
        assert ("config", "applied") in kinds
        assert [k for k in kinds if k[0] == "job"] == [("job", "queued"), ("job", "downloading")]
        cursor = registry.parse_cursor(feed["next"])
        assert registry.events(db, cursor, audit=True)["events"] == []
        retired = reg.retire("dev-1", 30.0, 0xAB)
        assert retired["retired"] == {"at": 30.0, "group": "field"}
    finally:
        db.close()


def test_operators_tokens_and_the_audit_log(database: str) -> None:
    db = Db(database)
    try:
        operators.add_operator(db, "ada", "admin", "a long password!", 1.0)
        made = operators.create_token(db, "ada", "script", 1.0)
        who = operators.authenticate(db, made["token"], 2.0)
        assert who is not None and who.role == "admin"
        operators.record(db, 3.0, who, "POST", "/v1/x", 201, {"note": "100% done?"})
        [entry] = operators.audit(db)
        assert entry["detail"] == {"note": "100% done?"} and entry["operator"] == "ada"
        operators.add_operator(db, "bo", "viewer", None, 4.0)
        operators.remove_operator(db, "bo", 5.0)
        operators.add_operator(db, "bo", "operator", None, 6.0)  # a removed name, given again
        assert operators.get_operator(db, "bo") == {
            "name": "bo", "role": "operator", "password": False, "created": 6.0,
        }  # fmt: skip
        with pytest.raises(operators.OperatorError, match="last admin"):
            operators.remove_operator(db, "ada", 7.0)
    finally:
        db.close()


def test_a_token_used_again_within_a_minute_is_not_a_write(tmp_path: Path) -> None:
    """On SQLite even an UPDATE that changes nothing waits for the write lock, which the
    consumer's groups hold most of the time in a connect storm: every API call waited
    (3 and 7.7 s in the fleet bench). A token's last use is written once a minute."""
    path = tmp_path / "registry.db"
    db = Db(path)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        operators.add_operator(db, "ada", "admin", "a long password!", 1.0)
        made = operators.create_token(db, "ada", "script", 1.0)
        assert operators.authenticate(db, made["token"], 2.0) is not None  # written: 2.0
        writer.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        assert operators.authenticate(db, made["token"], 50.0) is not None  # no wait
        writer.execute("COMMIT")
        assert operators.get_token(db, made["id"])["last_used"] == 2.0  # type: ignore[index]
        assert operators.authenticate(db, made["token"], 70.0) is not None  # a minute on
        assert operators.get_token(db, made["id"])["last_used"] == 70.0  # type: ignore[index]
    finally:
        writer.close()
        db.close()


def test_the_hubs_peers_and_tunnel_word_in_the_same_database(database: str) -> None:
    hub, service = Db(database), Db(database)
    try:
        peers = PeerStore(hub)
        tunnel = Tunnel.parse("10.77.0.0/24", None)
        first = peers.add(tunnel, "dev-1", "A" * 43 + "=")
        second = peers.add(tunnel, "dev-2", "B" * 43 + "=")
        assert first.address_v4 != second.address_v4
        reg = registry.Registry(service)
        report(reg, "dev-1", "online", {"online": True, "ts": 1.0})
        tunnelstate.record(hub, "dev-1", False, time.time() - 100)
        [change] = reg.tunnel_changes(0)
        t = reg.apply_tunnel(change, time.time())
        assert t is not None and t.online is False
        assert peers.remove("dev-2") and [p.device for p in peers.peers()] == ["dev-1"]
    finally:
        hub.close()
        service.close()


def tick_together(copies: list[Db]) -> None:
    """Every copy runs a rollout's `tick` five times, all starting at the same moment."""
    go = threading.Barrier(len(copies))
    errors: list[BaseException] = []

    def tick(db: Db) -> None:
        try:
            go.wait()
            for _ in range(5):
                rolloutstore.tick(db, 2.0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=tick, args=(db,)) for db in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_two_copies_moving_one_rollout_start_each_phase_once(database: str, tmp_path: Path) -> None:
    """Several service copies run `tick` every second on one database: each phase's job is
    made once, whatever the interleaving (the stores' write rule, on either engine)."""
    artifacts = ArtifactStore(tmp_path / "artifacts")
    sha = artifacts.add(make_swu(tmp_path / "a.swu", size=100)).sha256
    copies = [Db(database) for _ in range(3)]
    devices = [f"dev-{i:02}" for i in range(8)]
    try:
        spec = parse_spec(
            {"artifact": sha, "devices": devices, "phases": [{"count": 2}, {"percent": 100}]}
        )
        made = rolloutstore.create(copies[0], artifacts, spec, 1.0, "ada")
        tick_together(copies)
        jobs = copies[1].execute("SELECT id, target FROM update_jobs ORDER BY target").fetchall()
        assert [j["target"] for j in jobs] == [f"rollout:{made['id']}:1"]  # phase 2 waits
        for device in devices[:2]:
            for state in ("downloading", "installing", "rebooting", "verifying", "succeeded"):
                out = jobstore.apply_report(
                    copies[2], device, JobReport(jobs[0]["id"], state, None, None, 3.0)
                )
                assert out.ignored is None, out
        tick_together(copies)
        jobs = copies[0].execute("SELECT target FROM update_jobs ORDER BY target").fetchall()
        assert [j["target"] for j in jobs] == [f"rollout:{made['id']}:{p}" for p in (1, 2)]
        shown = rolloutstore.get(copies[0], made["id"])
        assert shown is not None and [e["state"] for e in shown["events"]] == [
            "scheduled", "running", "running",
        ]  # fmt: skip
        second = {d["job"] for d in shown["devices"] if d["phase"] == 2}
        assert len(second) == 1 and set(jobstore.busy_devices(copies[0], devices)) == set(
            devices[2:]
        )
    finally:
        for db in copies:
            db.close()


def test_a_database_out_of_reach_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no registry at"):
        Db(tmp_path / "missing.db", migrate=False)
    with pytest.raises(store.database.DatabaseError, match="postgresql:// URL"):
        Db("mysql://somewhere/db")
    down = Db("postgresql://nobody@127.0.0.1:1/none", migrate=False)
    with pytest.raises(store.Error):
        down.execute("SELECT 1")
    down.close()


def test_each_shard_publishes_for_its_own_devices_and_the_fleet_is_one(database: str) -> None:
    """Issue 15, item 3, in the database: a device belongs to the shard it was enrolled
    on and then to the one its last connect came through; each shard's copies publish
    only for theirs (and for a device no shard has claimed yet); every copy shows the
    whole fleet. The hubs' peers stay apart."""
    db = Db(database)
    one, two, single = (
        registry.Registry(db, "one"), registry.Registry(db, "two"), registry.Registry(db)
    )  # fmt: skip
    try:
        one.enrol("dev-a", hardware=None, group=None, tags=[], certificate_serial=1, now=1.0)
        two.enrol("dev-b", hardware=None, group=None, tags=[], certificate_serial=2, now=1.0)
        report(two, "dev-b", "online", {"online": True, "ts": 2.0})
        for device in ("dev-a", "dev-b", "dev-new"):  # dev-new: never enrolled nor seen
            one.set_device_config(device, {"health": {"interval_s": 30}}, 3.0)
        assert [d for d, _, _ in one.unpublished()] == ["dev-a", "dev-new"]
        assert [d for d, _, _ in two.unpublished()] == ["dev-b", "dev-new"]
        assert [d for d, _, _ in single.unpublished()] == ["dev-a", "dev-b", "dev-new"]
        shown = {d["id"]: d["shard"] for d in devicelist.list_devices(db)}
        assert shown == {"dev-a": "one", "dev-b": "two"}
        # dev-a moves: its next connect comes through shard two
        report(two, "dev-a", "online", {"online": True, "ts": 4.0})
        assert registry.get_device(db, "dev-a")["shard"] == "two"
        assert [d for d, _, _ in one.unpublished()] == ["dev-new"]
        for device in ("dev-a", "dev-b"):
            jobstore.insert_job(db, "a" * 64, [device], f"device:{device}", 5.0)
        assert {j[0] for j in jobstore.unpublished(db, "two")} == {"dev-a", "dev-b"}
        assert jobstore.unpublished(db, "one") == []
        # the hubs' peers: each hub its own, one device id and key in the whole fleet
        hub_one, hub_two = PeerStore(db, "one"), PeerStore(db, "two")
        hub_one.add(Tunnel.parse("10.77.0.0/24", None), "dev-a", "A" * 43 + "=")
        hub_two.add(Tunnel.parse("10.78.0.0/24", None), "dev-b", "B" * 43 + "=")
        assert [p.device for p in hub_one.peers()] == ["dev-a"]
        assert [p.device for p in hub_two.peers()] == ["dev-b"]
        with pytest.raises(PlanError, match="dev-a is already a tunnel peer"):
            hub_two.add(Tunnel.parse("10.78.0.0/24", None), "dev-a", "C" * 43 + "=")
        assert not hub_two.remove("dev-a")  # another hub's peer
        assert [p.device for p in PeerStore(db).peers()] == ["dev-a", "dev-b"]
    finally:
        db.close()


class FailingOn(ManagementService):
    """The real service, with one device whose messages fail while written (a fault
    injected: the devices' input is checked before it reaches the database, so no real
    message is known to fail there)."""

    def handle(self, topic: str, payload: bytes) -> None:
        if "/dev-bad/" in topic:
            self.db.execute("INSERT INTO devices (id, first_seen) VALUES ('dev-bad', 1)")
            raise RuntimeError("a message that fails half way")
        super().handle(topic, payload)


def test_the_consumer_writes_a_group_in_one_go_and_one_bad_message_costs_only_itself(
    database: str, tmp_path: Path
) -> None:
    cert, key, ca = api_certificate(tmp_path / "pki")
    cfg = ManagementConfig(
        db=database,
        identity=Identity(cert, key, ca),
        broker=Endpoint("127.0.0.1", 1),  # never connected: the messages are given below
        group="g",
        api=OperatorApi(cert, key, port=0),
        artifact_dir=tmp_path / "artifacts",
    )

    def message(device: str, ts: float) -> mqtt.MQTTMessage:
        msg = mqtt.MQTTMessage(mid=1, topic=f"mgmt/{device}/up/health".encode())
        msg.payload = json.dumps({"v": 1, "ts": ts, "uptime_s": 1}).encode()
        return msg

    good = [message(f"dev-{i}", 10.0 + i) for i in range(20)]
    batches = [
        (ManagementService, good[:10]),  # a group: one transaction
        (FailingOn, [*good[10:15], message("dev-bad", 1.0), *good[15:]]),
    ]
    for kind, batch in batches:
        service = kind(cfg)
        try:
            assert service.inbox.write(batch)
        finally:
            service.http.server_close()
            service.db.close()
    db = Db(database)
    try:
        shown = {d["id"]: d["health_ts"] for d in devicelist.list_devices(db)}
    finally:
        db.close()
    assert shown == {f"dev-{i}": 10.0 + i for i in range(20)}  # dev-bad's half is undone


def test_devices_are_listed_a_page_at_a_time_filtered_and_counted(database: str) -> None:
    db = Db(database)
    reg = registry.Registry(db)
    now = time.time()
    try:
        for i, (tags, group) in enumerate(
            [(["site:a"], "field"), (["site:b", "x_y"], None), (["site:a"], "field")]
        ):
            reg.enrol(
                f"dev-{i}", hardware=None, group=group, tags=tags, certificate_serial=i, now=now
            )
        reg.enrol("dev-9", hardware=None, group=None, tags=[], certificate_serial=9, now=now)
        for device, version in (("dev-0", "2.0"), ("dev-1", "1.0"), ("dev-2", None)):
            report(reg, device, "online", {"online": True, "ts": 10.0})
            body = {"ts": 11.0} if version is None else {"ts": 11.0, "os_version": version}
            report(reg, device, "health", body)
        asleep = {"online": False, "reason": "asleep", "ts": 20.0, "next_checkin": 3620.0}
        reg.apply(
            "dev-2", parse_report("dev-2", "online", json.dumps({"v": 1, **asleep}).encode()), now
        )
        report(reg, "dev-3", "online", {"online": False, "reason": "lost"})  # never enrolled
        reg.retire("dev-1", now, None)

        def ids(**filters: Any) -> list[str]:
            return [d["id"] for d in devicelist.list_devices(db, devicelist.DeviceQuery(**filters))]

        assert ids() == ["dev-0", "dev-1", "dev-2", "dev-3", "dev-9"]
        # keyset pages: each starts after the last id of the one before
        assert ids(limit=2) == ["dev-0", "dev-1"]
        assert ids(limit=2, after="dev-1") == ["dev-2", "dev-3"]
        assert ids(limit=2, after="dev-3") == ["dev-9"]
        assert ids(q="v-9") == ["dev-9"]
        assert ids(group="field") == ["dev-0", "dev-2"]
        assert ids(tag="site:a") == ["dev-0", "dev-2"]
        assert ids(tag="x_y") == ["dev-1"]
        assert ids(tag="x") == []  # a whole tag, not part of one ("x_y" is no "x")
        assert ids(version="2.0") == ["dev-0"]
        assert ids(version="unknown") == ["dev-2", "dev-3", "dev-9"]
        assert ids(presence="online") == ["dev-0", "dev-1"]
        assert ids(presence="asleep") == ["dev-2"]
        assert ids(presence="offline") == ["dev-3"]
        assert ids(presence="overdue", tag="site:a") == []
        listed = {d["id"]: d for d in devicelist.list_devices(db)}
        assert listed["dev-0"]["group"] == "field" and listed["dev-0"]["os_version"] == "2.0"
        assert listed["dev-9"]["presence"] is None and listed["dev-9"]["tags"] == []
        assert "health" not in listed["dev-0"]  # the whole report is the device's own page
        assert registry.get_device(db, "dev-0")["health"]["os_version"] == "2.0"  # type: ignore[index]
        # a device three hours past its check-in is overdue (the same rule, in SQL)
        assert [d["id"] for d in devicelist.list_devices(
            db, devicelist.DeviceQuery(presence="overdue"), overdue_after=-3 * 3600.0
        )] == ["dev-2"]  # fmt: skip

        assert devicelist.fleet(db) == {
            "devices": 4,  # dev-1 is retired
            "retired": 1,
            "presence": {"online": 1, "asleep": 1, "overdue": 0, "offline": 1, "never_seen": 1},
            "versions": [{"version": "2.0", "devices": 1}, {"version": None, "devices": 3}],
            "tags": ["site:a", "site:b", "x_y"],
        }
        for bad in ({"limit": 0}, {"q": "DEV"}, {"q": "%"}, {"tag": "a b"}, {"presence": "gone"}):
            with pytest.raises(devicelist.QueryError):
                devicelist.DeviceQuery(**bad)  # type: ignore[arg-type]
    finally:
        db.close()


def test_a_registry_from_before_the_version_column_is_given_it(database: str) -> None:
    engine = database_module.engine(database)
    with engine.begin() as conn:
        database_module.upgrade(conn, store.PACKAGE, store.VERSION_TABLE, to="0002")
        for device, health in (
            ("dev-a", {"os_version": "3.1"}),
            ("dev-b", {"os_version": 7}),  # a device's nonsense: no version
            ("dev-c", None),
        ):
            conn.execute(
                sa.text("INSERT INTO devices (id, first_seen, health) VALUES (:id, 1, :h)"),
                {"id": device, "h": None if health is None else json.dumps(health)},
            )
    engine.dispose()
    db = Db(database)  # the next start migrates
    try:
        got = dict(db.execute("SELECT id, os_version FROM devices ORDER BY id").fetchall())
        assert got == {"dev-a": "3.1", "dev-b": None, "dev-c": None}
    finally:
        db.close()
