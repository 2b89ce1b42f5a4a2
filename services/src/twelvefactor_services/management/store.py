"""The management service's database: the registry, update jobs, rollouts, operators and
the audit log, in one SQLite file (the embedded default, a path) or one PostgreSQL
database (a `postgresql://` URL), through SQLAlchemy (twelvefactor_services.database);
the schema is versioned by the Alembic migrations beside this module.

The stores' statements are written once, in SQL both engines accept, with `?` for their
parameters (DB-API's qmark style, SQLite's own); for psycopg they become its `%s` here,
in one place (no statement holds a literal `?`).

Writes: `with db.write():` is one transaction. SQLite takes the file's write lock at its
start (BEGIN IMMEDIATE, database.py); PostgreSQL keeps the same rule through a
transaction-scoped advisory lock. The stores' steps read and then write (a rollout's
tick, a job report, a configuration version), so service copies never interleave two of
them, on either engine. Outside `write()` every statement commits on its own.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from twelvefactor_services import database

PACKAGE = "twelvefactor_services.management"
VERSION_TABLE = "management_schema"
WRITE_LOCK = zlib.crc32(b"twelvefactor management writes")  # PostgreSQL's advisory lock key

# What the stores catch where a busy or unreachable database must cost a retry, not a
# thread: every driver error comes wrapped in this.
Error = sa.exc.SQLAlchemyError


class Row(tuple[Any, ...]):
    """A result row, read by position or by column name (as sqlite3.Row is)."""

    _names: dict[str, int]

    def __new__(cls, values: Iterable[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if type(key) is str:  # (the fleet's list reads 24,000 of these: no isinstance)
            key = self._names[key]
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


class Cursor:
    """A statement's rows (read at once, so the connection goes back to the pool) and
    how many rows it changed."""

    def __init__(self, result: sa.CursorResult[Any]) -> None:
        self.rowcount: int = result.rowcount
        self.rows: list[Row] = []
        if result.returns_rows:
            names = {name: i for i, name in enumerate(result.keys())}
            self.rows = [Row(r, names) for r in result]

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def fetchone(self) -> Any:  # Row | None, typed as sqlite3's: callers know their query
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Row]:
        return self.rows

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None


class Db:
    """One database, shared by the threads of a process (a pool of connections; each
    thread's write transaction is its own)."""

    def __init__(self, target: str | Path, *, migrate: bool = True) -> None:
        """`target`: a SQLite file's path or a postgresql:// URL. Without `migrate` the
        schema must be there already (a reader that must not make a database)."""
        self.target = str(target)
        if not migrate and "://" not in self.target and not Path(self.target).exists():
            raise FileNotFoundError(f"no registry at {self.target}")
        self.engine = database.engine(target)
        self.postgres = self.engine.dialect.name == "postgresql"
        self._local = threading.local()
        if migrate:
            _migrate(self)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def _tx(self) -> sa.Connection | None:
        conn: sa.Connection | None = getattr(self._local, "conn", None)
        return conn

    def _sql(self, sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s") if self.postgres else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """One statement: in this thread's transaction if one is open, else on its own."""
        conn = self._tx
        if conn is not None:
            return Cursor(conn.exec_driver_sql(self._sql(sql), tuple(params)))
        with self.engine.connect() as own:
            own = own.execution_options(isolation_level="AUTOCOMMIT")
            return Cursor(own.exec_driver_sql(self._sql(sql), tuple(params)))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        conn = self._tx
        if conn is not None:
            conn.exec_driver_sql(self._sql(sql), [tuple(r) for r in rows])
            return
        with self.write():
            self.executemany(sql, rows)

    @contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction; inside another of the same thread, part of it."""
        if self._tx is not None:
            yield
            return
        with self.engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE (database.py)
            if self.postgres:
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads that see one state of every table, taking no write lock."""
        if self._tx is not None:
            yield
            return
        with self.engine.connect() as conn:
            if self.postgres:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    self._local.conn = conn
                    try:
                        yield
                    finally:
                        self._local.conn = None
                return
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("BEGIN")  # deferred: a read transaction (WAL)
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None
                conn.exec_driver_sql("COMMIT")


def _migrate(db: Db) -> None:
    """To the newest schema, one copy at a time (revision 0001 also completes a SQLite
    registry made before the migrations)."""
    database.migrate(db.engine, PACKAGE, VERSION_TABLE)
