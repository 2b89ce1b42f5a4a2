"""The management service process: MQTT consumer, registry writer, HTTP API, config publisher.

The devices' messages are written by one thread in groups: what the broker has
delivered meanwhile goes into one transaction (at most BATCH_MAX messages), and
each message is acknowledged to the broker only after its group committed (a
group that fails is written again one message at a time, so one bad message
costs only itself). One transaction per message, in series on paho's network
thread, was the first limit of the fleet bench (docs/scale.md).

Desired configurations are set through the HTTP API or the CLI (which writes
the registry directly); a publisher thread publishes every device whose
desired version is newer than the one last published, retained, on
`mgmt/<id>/down/config`, and marks it published once the broker acknowledged
it. It looks at once when the HTTP API changed something and every second
otherwise, so a change made with the CLI reaches the device too. Several
copies may publish the same version: it is the same retained document.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from twelvefactor_agent.protocol.topics import MANAGEMENT_UP, mgmt_down, parse_up

from twelvefactor_services.inbox import Inbox
from twelvefactor_services.management import jobstore, rolloutstore, store
from twelvefactor_services.management.access import certificate_names
from twelvefactor_services.management.artifact_server import ArtifactServer, server_context
from twelvefactor_services.management.artifacts import ArtifactStore
from twelvefactor_services.management.configlogic import desired_document
from twelvefactor_services.management.http_api import MAX_ARTIFACT, ApiServer
from twelvefactor_services.management.http_api import server_context as api_context
from twelvefactor_services.management.jobs import (
    JOB_QUIET_AFTER,
    JobReportError,
    parse_job_report,
    replayed,
)
from twelvefactor_services.management.logic import (
    OVERDUE_AFTER,
    ConfigReport,
    PayloadError,
    parse_report,
)
from twelvefactor_services.management.registry import Registry
from twelvefactor_services.management.store import Db
from twelvefactor_services.mqtt import (
    Connection,
    Endpoint,
    Identity,
    connect_properties,
    make_client,
    run_until,
)
from twelvefactor_services.topics import shared

log = logging.getLogger("twelvefactor.management")
KEEPALIVE = 30
PUBLISH_INTERVAL = 1.0
# messages in one write transaction at the most: bounds a group's time holding the write
# lock (another copy, the API and the hub wait for it) and what one failure redoes
BATCH_MAX = 200


@dataclass(frozen=True)
class OperatorApi:
    """The operator API's HTTPS listener: address, certificate and the names it answers to."""

    cert: Path
    key: Path
    names: tuple[str, ...] = ()  # besides the certificate's own names and the bound address
    host: str = "127.0.0.1"
    port: int = 9443
    max_artifact: int = MAX_ARTIFACT


@dataclass(frozen=True)
class ManagementConfig:
    db: str  # a SQLite file's path or a postgresql:// URL
    identity: Identity
    broker: Endpoint
    group: str
    api: OperatorApi
    instance: int = 1
    ready_file: Path | None = None
    artifact_dir: Path | None = None  # default: "artifacts" next to the registry
    artifacts: ArtifactServing | None = None  # None: no artifact server in this copy
    signing_cert: Path | None = None  # what devices check .swu signatures with
    overdue_after: float = OVERDUE_AFTER  # seconds a sleeping device may be late
    # seconds without a report before an online device's unfinished job is offered again
    job_quiet_after: float = JOB_QUIET_AFTER
    shard: str | None = None  # the hub shard whose broker this copy consumes from
    # False: an API copy, which takes none of the devices' messages (its operator API and
    # its publisher only), so that no burst of reports delays an operator's call
    consume: bool = True

    @property
    def artifact_store(self) -> ArtifactStore:
        folder = self.artifact_dir
        if folder is None:
            if "://" in self.db:
                raise ValueError(f"{self.db} is a database server: the artifacts need a folder")
            folder = Path(self.db).parent / "artifacts"
        return ArtifactStore(folder, self.signing_cert)


@dataclass(frozen=True)
class ArtifactServing:
    """The HTTPS artifact server: where it listens, its certificate, what devices trust."""

    host: str
    port: int
    cert: Path
    key: Path
    device_ca: Path
    url: str  # base URL the devices use (https://<address inside the tunnel>:<port>)


class ManagementService:
    def __init__(self, cfg: ManagementConfig) -> None:
        self.cfg = cfg
        self.db = Db(cfg.db)  # every thread's (a pool of connections), the schema made
        self.registry = Registry(self.db, cfg.shard)
        self.conn = Connection()
        self.subscribed = threading.Event()
        self.handled = 0  # messages taken from the broker, valid or not (load sharing is visible)
        # acknowledged once written (the inbox's writer): the broker holds what is not
        self.client = make_client(f"management-{cfg.instance}", cfg.identity, manual_ack=True)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.stopping = threading.Event()
        self.inbox = Inbox(self.client, self._store, self._refused, self.stopping, log, BATCH_MAX)
        self.publish_wake = threading.Event()
        api = cfg.api
        self.http = ApiServer(
            (api.host, api.port),
            self.db,
            self.health,
            api_context(api.cert, api.key),
            [*certificate_names(api.cert), *api.names],
            changed=self.publish_wake.set,
            artifacts=cfg.artifact_store,
            max_artifact=api.max_artifact,
            overdue_after=cfg.overdue_after,
        )
        self.artifact_server: ArtifactServer | None = None
        if cfg.artifacts is not None:
            a = cfg.artifacts
            self.artifact_server = ArtifactServer(
                (a.host, a.port),
                cfg.artifact_store,
                server_context(a.cert, a.key, a.device_ca),
                self._may_fetch,
                self._sent,
            )

    def _release(self, sha256: str) -> str | None:
        """The artifact a served file belongs to (itself, or the one whose delta it is)."""
        owner = self.cfg.artifact_store.owner(sha256)
        return None if owner is None else owner.sha256

    def _may_fetch(self, device: str, sha256: str) -> bool:
        release = self._release(sha256)
        if release is None:
            return False
        return jobstore.may_fetch(self.db, device, release)

    def _sent(self, device: str, sha256: str, sent: int) -> None:
        release = self._release(sha256)
        if release is None:  # the artifact was deleted during the answer
            return
        try:
            jobstore.add_sent(self.db, device, release, sent)
        except store.Error as exc:  # a busy registry costs a counter, not the download
            log.warning("artifact bytes sent to %s not counted: %s", device, exc)

    def health(self) -> dict[str, Any]:
        ok = self.conn.connected.is_set() and (self.subscribed.is_set() or not self.cfg.consume)
        return {
            "ok": ok,
            "instance": self.cfg.instance,
            "mqtt": "connected" if self.conn.connected.is_set() else "disconnected",
            "consumes": self.cfg.consume,
            "subscribed": self.subscribed.is_set(),
            "handled": self.handled,
        }

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.conn.on_connect(rc)
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)
            return
        log.info("connected to %s:%d", self.cfg.broker.host, self.cfg.broker.port)
        if self.cfg.consume:
            c.subscribe(shared(self.cfg.group, MANAGEMENT_UP), qos=1)
        else:  # an API copy: ready once it can publish
            self._ready()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.conn.on_disconnect(rc)
        self.subscribed.clear()
        log.warning("disconnected from the broker: %s", rc)

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        if codes[0].is_failure:
            log.error("subscription refused: %s", codes[0])
            return
        self.subscribed.set()
        self._ready()

    def _ready(self) -> None:
        if self.cfg.ready_file is not None and not self.cfg.ready_file.exists():
            self.cfg.ready_file.write_text(f"{self.http.server_address[1]}\n")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.handled += 1
        self.inbox.put(msg)

    def _store(self, group: list[mqtt.MQTTMessage]) -> None:
        """A group of the devices' messages in one transaction (the inbox's writer)."""
        with self.db.write():
            for msg in group:
                self.handle(msg.topic, bytes(msg.payload))

    @staticmethod
    def _refused(msg: mqtt.MQTTMessage, _exc: Exception) -> bool:
        """One message the registry refused on its own: logged and dropped (a device's
        bad message must never stop the service)."""
        log.exception("failed to handle a message on %s", msg.topic)
        return True

    def handle(self, topic: str, payload: bytes) -> None:
        up = parse_up(topic)
        if up is None or up.side != "mgmt" or len(up.rest) != 1:
            log.warning("dropped message on unexpected topic %r", topic)
            return
        if up.rest[0] == "update":
            self._handle_update(up.device, payload)
            return
        try:
            report = parse_report(up.device, up.rest[0], payload)
        except PayloadError as exc:
            log.warning("dropped %r from %s: %s", up.rest[0], up.device, exc)
            return
        t = self.registry.apply(up.device, report, time.time())
        if isinstance(report, ConfigReport):
            log.info(
                "%s: configuration version %d %s%s",
                up.device,
                report.version,
                report.status,
                f": {report.error!r}" if report.error else "",  # device text, quoted
            )
        if t is not None:
            state = "online" if t.online else f"offline ({t.reason!r})"  # device text, quoted
            log.info("%s is %s", up.device, state)

    def _handle_update(self, device: str, payload: bytes) -> None:
        try:
            report = parse_job_report(payload)
        except JobReportError as exc:
            log.warning("dropped update report from %s: %s", device, exc)
            return
        out = jobstore.apply_report(self.db, device, report)
        if (
            out.ignored is not None
            and out.before is not None
            and replayed(out.before, report.state)
        ):
            log.debug("%s: update report for %s replayed: %s", device, report.job, out.ignored)
        elif out.ignored is not None:
            log.warning("%s: update report for %s ignored: %s", device, report.job, out.ignored)
        else:
            log.info("%s: job %s %s -> %s", device, report.job, out.before, out.after)

    def _publisher(self) -> None:
        tunnel_seq = 0
        while not self.stopping.is_set():
            self.publish_wake.wait(PUBLISH_INTERVAL)
            self.publish_wake.clear()
            tunnel_seq = self._apply_tunnel(self.registry, tunnel_seq)
            self._move_rollouts(self.db)
            try:
                if self.conn.connected.is_set():
                    self._publish_desired(self.registry)
                if self.conn.connected.is_set():
                    self._publish_jobs(self.db)
            except store.Error as exc:  # a database out of reach: the next round tries again
                log.warning("nothing published this round: %s", exc)

    def _apply_tunnel(self, registry: Registry, seq: int) -> int:
        """The hub's changes to devices' tunnels since change `seq`; the last one applied."""
        try:
            for change in registry.tunnel_changes(seq):
                t = registry.apply_tunnel(change, time.time())
                seq = change.seq
                if t is not None:
                    state = "online" if t.online else "offline"
                    log.info("%s is %s (%s)", change.device, state, t.reason)
        except store.Error as exc:  # a busy or damaged registry: try again next round
            log.warning("tunnel states not applied: %s", exc)
        return seq

    def _move_rollouts(self, db: Db) -> None:
        """Rollouts one step on, and download-only jobs whose install time came released."""
        try:
            released = jobstore.release_due(db, time.time())
            moves = rolloutstore.tick(db, time.time())
            again = jobstore.offer_quiet_again(db, time.time(), self.cfg.job_quiet_after)
        except store.Error as exc:  # a busy or damaged registry: try again next round
            log.warning("rollouts not moved: %s", exc)
            return
        for device, job in again:
            log.info("job %s: nothing from %s for a while, offered again", job, device)
        for job, count in released:
            log.info("job %s: install time reached, %d device(s) released", job, count)
        for rollout, action, reason in moves:
            log.info("rollout %s: %s (%s)", rollout, action, reason)

    def _publish_jobs(self, db: Db) -> None:
        if self.cfg.artifacts is None:
            return  # without an artifact server a job cannot be fetched: hold it
        artifacts = self.cfg.artifact_store
        for device, job, sha, install, ended in jobstore.unpublished(db, self.cfg.shard):
            if ended:  # its final report arrived: the retained job goes
                document = b""
            else:
                artifact = artifacts.get(sha)
                if artifact is None:
                    log.error("job %s names artifact %s, which is gone from the store", job, sha)
                    continue
                base = self.cfg.artifacts.url
                document = jobstore.job_document(job, device, artifact, base, install)
            info = self.client.publish(mgmt_down(device, "update"), document, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=10)
            except (RuntimeError, ValueError) as exc:
                log.warning("update job %s for %s not published: %s", job, device, exc)
                return
            if not info.is_published():
                return
            jobstore.mark_published(db, device, job, install, time.time())
            if ended:
                log.info("cleared update job %s for %s (ended)", job, device)
            else:
                log.info("published update job %s for %s (install: %s)", job, device, install)

    def _publish_desired(self, registry: Registry) -> None:
        for device, version, config in registry.unpublished():
            info = self.client.publish(
                mgmt_down(device, "config"),
                desired_document(version, config),
                qos=1,
                retain=True,
            )
            try:
                info.wait_for_publish(timeout=10)
            except (RuntimeError, ValueError) as exc:
                log.warning("desired configuration for %s not published: %s", device, exc)
                return
            if not info.is_published():
                return  # the connection is gone; the next round tries again
            registry.mark_published(device, version)
            log.info("published configuration version %d for %s", version, device)

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        self.http.start()
        if self.artifact_server is not None:
            self.artifact_server.start()
            host, port = self.artifact_server.server_address[:2]
            log.info("artifact server on https://%s:%d", host, port)
        if self.cfg.signing_cert is None:
            log.warning(
                "no --artifact-signing-cert: artifacts are not checked against the devices'"
                " signing certificate when added (a badly signed one fails on every device)"
            )
        publisher = threading.Thread(target=self._publisher, name="publisher", daemon=True)
        publisher.start()
        if self.cfg.consume:
            self.inbox.start()
        log.info("operator API on https://%s:%d", self.cfg.api.host, self.http.server_address[1])

        stop_requested = threading.Event()

        def stop(_sig: int, _frame: FrameType | None) -> None:
            stop_requested.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.client.connect_async(
            self.cfg.broker.host,
            self.cfg.broker.port,
            keepalive=KEEPALIVE,
            clean_start=True,
            properties=connect_properties(0),
        )
        run_until(self.client, stop_requested)
        self.stopping.set()
        self.publish_wake.set()
        publisher.join(15)
        if self.cfg.consume:
            self.inbox.join(15)
        self.http.shutdown()
        if self.artifact_server is not None:
            self.artifact_server.stop()
        self.db.close()
        if self.cfg.ready_file is not None:
            self.cfg.ready_file.unlink(missing_ok=True)
        log.info("stopped")
