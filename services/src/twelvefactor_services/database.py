"""Where a service keeps its state: a SQLite file (the embedded default, a path) or a
PostgreSQL server (a `postgresql://` URL), through SQLAlchemy Core, with the schema
versioned by Alembic migrations kept in the repository beside each store.

One code path for both engines: the statements are SQL both accept (`ON CONFLICT`,
`RETURNING`; SQLite 3.35 or newer), with named parameters. What differs is set up
here, once:

- SQLite: WAL, `synchronous=FULL` (an acknowledged message survives a power loss),
  a 10 s busy wait, and every write transaction `BEGIN IMMEDIATE`, so two copies of a
  service serialise at the start of a write rather than fail at its end;
- PostgreSQL: read committed, which with `ON CONFLICT` and single-statement updates
  is what several copies need (no table is read and then written from the read).
"""

from __future__ import annotations

import sqlite3
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext

BUSY_SECONDS = 10.0  # SQLite: how long a writer waits for another's transaction
# The database itself out of reach (a server down or refusing, a file locked past the
# busy wait, a full disk): worth waiting for, unlike a statement it refuses.
Unavailable = sa.exc.OperationalError
UNAVAILABLE_RETRY = 1.0  # seconds between tries while the database is out of reach
POSTGRES_SCHEMES = ("postgresql://", "postgresql+psycopg://")


class DatabaseError(RuntimeError):
    pass


def url_of(target: str | Path) -> str:
    """A path is a SQLite file (its folder made); a postgresql:// URL is taken as it is
    (psycopg 3 as the driver)."""
    text = str(target)
    if text.startswith("postgresql://"):
        return "postgresql+psycopg://" + text.removeprefix("postgresql://")
    if text.startswith(POSTGRES_SCHEMES):
        return text
    if "://" in text:
        raise DatabaseError(f"{text}: a SQLite file's path or a postgresql:// URL")
    path = Path(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _sqlite_connect(dbapi: sqlite3.Connection, _record: Any) -> None:
    dbapi.isolation_level = None  # SQLAlchemy's begin hook below opens transactions
    # WAL stays with the file: the first connection to a new file switches it. The switch
    # needs the file to itself, and SQLite refuses it at once ("database is locked", no
    # busy wait) while another connection reads: tried again for the busy timeout.
    deadline = time.monotonic() + BUSY_SECONDS
    while dbapi.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            dbapi.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    dbapi.execute("PRAGMA synchronous=FULL")
    dbapi.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")


def _sqlite_begin(conn: sa.Connection) -> None:
    if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def engine(target: str | Path) -> sa.Engine:
    url = url_of(target)
    if url.startswith("sqlite"):
        made = sa.create_engine(url, connect_args={"timeout": BUSY_SECONDS})
        sa.event.listen(made, "connect", _sqlite_connect)
        sa.event.listen(made, "begin", _sqlite_begin)
        if sqlite3.sqlite_version_info < (3, 35):
            raise DatabaseError(f"SQLite {sqlite3.sqlite_version}: 3.35 or newer (RETURNING)")
        return made
    return sa.create_engine(url, pool_pre_ping=True)


def migrate(db: sa.Engine, package: str, version_table: str) -> None:
    """Bring the schema to the newest revision of `package`'s migrations (its
    `migrations` folder), recorded in `version_table` (one per store: the stores may
    share a PostgreSQL database); one copy of a service at a time."""
    with db.begin() as conn:
        one_at_a_time(conn, version_table)
        upgrade(conn, package, version_table)


def one_at_a_time(conn: sa.Connection, version_table: str) -> None:
    """Copies (and threads) starting together migrate one after the other, each in one
    transaction: the others then find the schema at its head. SQLite: the transaction's
    BEGIN IMMEDIATE already serialises; PostgreSQL: a transaction-scoped advisory lock
    named by the version table."""
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(version_table.encode())
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def upgrade(conn: sa.Connection, package: str, version_table: str, to: str = "head") -> None:
    """Alembic's upgrade (to the newest revision), in the caller's transaction."""
    command.upgrade(_config(conn, package, version_table), to)


def stamp(conn: sa.Connection, package: str, version_table: str, rev: str) -> None:
    """Record `rev` without running it (a file made before the migrations existed), in
    the caller's transaction."""
    command.stamp(_config(conn, package, version_table), rev)


def _config(conn: sa.Connection, package: str, version_table: str) -> Config:
    config = Config()
    config.set_main_option("script_location", f"{package}:migrations")
    config.attributes["version_table"] = version_table
    config.attributes["connection"] = conn
    return config


def run_alembic_env() -> None:
    """The body of each store's migrations/env.py: run on the connection `migrate`
    (or `upgrade`, `stamp`) gives, in the caller's transaction."""
    from alembic import context

    config = context.config
    context.configure(
        connection=config.attributes["connection"],
        version_table=config.attributes["version_table"],
        transaction_per_migration=False,
        # the whole upgrade in the caller's transaction, SQLite too (BEGIN IMMEDIATE there):
        # Alembic's SQLite default ends it before the tables are made, so a second copy
        # starting at that moment found the schema stamped and no tables
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def revision(db: sa.Engine, version_table: str) -> str | None:
    """The revision the database is at (None: none yet)."""
    with reading(db) as conn:
        context = MigrationContext.configure(conn, opts={"version_table": version_table})
        return context.get_current_revision()


@contextmanager
def reading(db: sa.Engine) -> Iterator[sa.Connection]:
    """A connection for reads only (no write lock taken on SQLite)."""
    with db.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")
