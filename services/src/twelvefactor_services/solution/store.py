"""Deduplication, outbox and receiver leases (shared by all service copies), in a SQLite
file or in PostgreSQL (twelvefactor_services.database; the schema is versioned by the
migrations beside this module).

A message is accepted once per (device, seq): the dedup row and one outbox row
per receiver are written in one transaction, and the MQTT message is
acknowledged only after it commits. Outbox rows leave when their receiver has
taken the message, or, after too many refusals, for the dead letters, where
the operator sees them (`twelvefactor-solution dead-letters`): one message a
receiver will never take must not hold back the device's later ones for ever.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from twelvefactor_services import database
from twelvefactor_services.solution.envelope import Envelope

PACKAGE = "twelvefactor_services.solution"
VERSION_TABLE = "solution_schema"
# A SQLite file made before the migrations: PRAGMA user_version 1 is revision 0001;
# version 0 deduplicated on (device, seq), and its rows move over with queue_id ''.
MIGRATE_FROM_0 = """
ALTER TABLE messages RENAME TO messages_v0;
ALTER TABLE outbox RENAME TO outbox_v0;
DROP TABLE IF EXISTS dead_letters;
DROP TABLE IF EXISTS leases;
"""
COPY_FROM_0 = """
INSERT INTO messages SELECT device, '', seq, stream, ts, received_ts FROM messages_v0;
INSERT INTO outbox (id, receiver, device, queue_id, seq, record, attempts, last_error)
    SELECT id, receiver, device, '', seq, record, attempts, last_error FROM outbox_v0;
DROP TABLE messages_v0;
DROP TABLE outbox_v0;
"""


@dataclass(frozen=True)
class Pending:
    id: int
    device: str
    queue_id: str
    seq: int
    record: str


class Store:
    def __init__(self, target: str | Path) -> None:
        """`target`: a SQLite file's path, or a postgresql:// URL."""
        self.db = database.engine(target)
        self._migrate()

    def _statements(self, script: str) -> list[str]:
        return [s for s in script.split(";") if s.strip()]

    def _migrate(self) -> None:
        """To the newest schema, in one transaction, one copy at a time; a SQLite file
        made before the migrations is adopted in the same transaction."""
        with self.db.begin() as conn:
            database.one_at_a_time(conn, VERSION_TABLE)
            legacy = self._legacy_version(conn)
            if legacy == 0:
                for statement in self._statements(MIGRATE_FROM_0):
                    conn.exec_driver_sql(statement)
            elif legacy is not None:
                database.stamp(conn, PACKAGE, VERSION_TABLE, "0001")
            database.upgrade(conn, PACKAGE, VERSION_TABLE)
            if legacy == 0:
                for statement in self._statements(COPY_FROM_0):
                    conn.exec_driver_sql(statement)

    @staticmethod
    def _legacy_version(conn: sa.Connection) -> int | None:
        """A SQLite file's user_version when it holds the tables and no migrations yet."""
        if conn.dialect.name != "sqlite":
            return None
        tables = {
            row[0]
            for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if VERSION_TABLE in tables or "messages" not in tables:
            return None
        return int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)

    def close(self) -> None:
        self.db.dispose()

    def accept(self, env: Envelope, received_ts: float, receivers: Sequence[str]) -> bool:
        """True for a new (device, queue_id, seq); False for a duplicate (nothing written)."""
        return self.accept_many([[env]], received_ts, receivers) == [1]

    def accept_many(
        self, publishes: Sequence[Sequence[Envelope]], received_ts: float, receivers: Sequence[str]
    ) -> list[int]:
        """The messages of several publishes in one transaction (the consumer's group);
        how many of each were new (a duplicate writes nothing; two copies racing on one
        message: one wins)."""
        counts: list[int] = []
        with self.db.begin() as conn:
            for envs in publishes:
                counts.append(self._accept(conn, envs, received_ts, receivers))
        return counts

    @staticmethod
    def _accept(
        conn: sa.Connection, envs: Sequence[Envelope], received_ts: float, receivers: Sequence[str]
    ) -> int:
        new = 0
        for env in envs:
            cur = conn.execute(
                sa.text(
                    "INSERT INTO messages (device, queue_id, seq, stream, ts, received_ts)"
                    " VALUES (:device, :queue_id, :seq, :stream, :ts, :received_ts)"
                    " ON CONFLICT DO NOTHING"
                ),
                {
                    "device": env.device,
                    "queue_id": env.queue_id,
                    "seq": env.seq,
                    "stream": env.stream,
                    "ts": env.ts,
                    "received_ts": received_ts,
                },
            )
            if cur.rowcount != 1:
                continue
            new += 1
            record = env.record(received_ts)
            if receivers:
                conn.execute(
                    sa.text(
                        "INSERT INTO outbox (receiver, device, queue_id, seq, record)"
                        " VALUES (:receiver, :device, :queue_id, :seq, :record)"
                    ),
                    [
                        {
                            "receiver": r,
                            "device": env.device,
                            "queue_id": env.queue_id,
                            "seq": env.seq,
                            "record": record,
                        }
                        for r in receivers
                    ],
                )
        return new

    def pending(self, receiver: str, limit: int = 100, skip: Collection[str] = ()) -> list[Pending]:
        """The receiver's backlog, per device in the order accepted, leaving out the devices
        in `skip` (those waiting to retry: another device's messages go on meanwhile)."""
        query = sa.text(
            "SELECT id, device, queue_id, seq, record FROM outbox WHERE receiver = :receiver"
            " AND device NOT IN :skip ORDER BY device, id LIMIT :limit"
        ).bindparams(sa.bindparam("skip", expanding=True, type_=sa.Text))
        with database.reading(self.db) as conn:
            rows = conn.execute(
                query, {"receiver": receiver, "skip": list(skip), "limit": limit}
            ).fetchall()
        return [Pending(*r) for r in rows]

    def delivered(self, item_ids: Collection[int]) -> None:
        """Forget what the receiver took (after it made it durable: Receiver.flush)."""
        if not item_ids:
            return
        query = sa.text("DELETE FROM outbox WHERE id IN :ids").bindparams(
            sa.bindparam("ids", expanding=True, type_=sa.BigInteger)
        )
        with self.db.begin() as conn:
            conn.execute(query, {"ids": list(item_ids)})

    def failed(self, item_id: int, error: str, max_attempts: int, now: float) -> int:
        """Count a refusal; the attempts so far. At `max_attempts` the message moves to
        the dead letters (and 0 is returned: the device's next message may go)."""
        with self.db.begin() as conn:
            attempts = conn.execute(
                sa.text(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = :error"
                    " WHERE id = :id RETURNING attempts"
                ),
                {"error": error[:500], "id": item_id},
            ).scalar()
            if attempts is None:
                return 0
            if attempts < max_attempts:
                return int(attempts)
            conn.execute(
                sa.text(
                    "INSERT INTO dead_letters (id, receiver, device, queue_id, seq, record,"
                    " attempts, last_error, set_aside) SELECT id, receiver, device, queue_id,"
                    " seq, record, attempts, last_error, :now FROM outbox WHERE id = :id"
                ),
                {"now": now, "id": item_id},
            )
            conn.execute(sa.text("DELETE FROM outbox WHERE id = :id"), {"id": item_id})
            return 0

    def dead_letters(self) -> list[dict[str, object]]:
        """Messages a receiver refused too often, oldest first."""
        with database.reading(self.db) as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT receiver, device, queue_id, seq, attempts, last_error, set_aside,"
                    " record FROM dead_letters ORDER BY set_aside, id"
                )
            ).mappings()
            return [dict(row) for row in rows]

    def lease(self, receiver: str, owner: str, now: float, ttl: float) -> bool:
        """Take or renew the right to deliver to ``receiver`` (one copy at a time, in order):
        one statement, so two copies asking at once cannot both have it."""
        with self.db.begin() as conn:
            cur = conn.execute(
                sa.text(
                    "INSERT INTO leases (receiver, owner, until) VALUES (:receiver, :owner, :until)"
                    " ON CONFLICT (receiver) DO UPDATE SET owner = excluded.owner,"
                    " until = excluded.until"
                    " WHERE leases.owner = excluded.owner OR leases.until <= :now"
                ),
                {"receiver": receiver, "owner": owner, "until": now + ttl, "now": now},
            )
            return cur.rowcount == 1

    def release(self, receiver: str, owner: str) -> None:
        with self.db.begin() as conn:
            conn.execute(
                sa.text("DELETE FROM leases WHERE receiver = :receiver AND owner = :owner"),
                {"receiver": receiver, "owner": owner},
            )

    def counts(self) -> dict[str, int]:
        """Accepted messages and each receiver's backlog."""
        with database.reading(self.db) as conn:
            out = {
                "accepted": int(
                    conn.execute(sa.text("SELECT count(*) FROM messages")).scalar() or 0
                )
            }
            for receiver, n in conn.execute(
                sa.text("SELECT receiver, count(*) FROM outbox GROUP BY receiver")
            ):
                out[f"pending.{receiver}"] = n
            for receiver, n in conn.execute(
                sa.text("SELECT receiver, count(*) FROM dead_letters GROUP BY receiver")
            ):
                out[f"dead.{receiver}"] = n
        return out
