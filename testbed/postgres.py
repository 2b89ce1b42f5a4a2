"""A PostgreSQL server of the test bed's own: Debian's binaries, a cluster in a
temporary folder, a free port on 127.0.0.1 and a socket folder of its own.

Nothing is assumed of the machine's own PostgreSQL (Debian starts a cluster on
5432 where systemd runs; tests never touch it). The server refuses to run as
root, so a root test bed runs it as Debian's `postgres` user (the package makes
it). Authentication is `trust` on 127.0.0.1 only: the server lives as long as
the tests and listens nowhere else. The cluster's folder is one of its own under
the system's temporary folder (a test's folder sits under root-only parents that
the postgres user could not enter), removed by `stop`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from twelvefactor_services import database
from twelvefactor_services.services_stack import LOCALHOST, free_port

VERSIONS = Path("/usr/lib/postgresql")
DATABASE = "twelvefactor"
USER = "twelvefactor"
START_SECONDS = 60.0  # a subprocess guard: initdb and start take 2-5 s here


class PostgresError(RuntimeError):
    pass


def bindir() -> Path:
    """The newest installed server's binaries (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        (p for p in VERSIONS.glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise PostgresError(
            f"no PostgreSQL server under {VERSIONS}: install Debian's postgresql (scripts/setup)"
        )
    return found[-1]


class Postgres:
    """initdb, start, a database; `url` for SQLAlchemy; `stop` ends it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tf-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.log = self.root / "postgres.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        self._createdb: list[str] = []
        self._made = 0

    @property
    def url(self) -> str:
        return self.url_of(DATABASE)

    def url_of(self, database: str) -> str:
        return f"postgresql://{USER}@{LOCALHOST}:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database of the server (a test's own); its URL."""
        self._made += 1
        name = f"{DATABASE}_{self._made}"
        self._run(*self._createdb, name)
        return self.url_of(name)

    def set_connections(self, url: str, allowed: bool) -> None:
        """A database of the server refusing every new connection (its open ones ended:
        an outage as its clients see one), or taking them again."""
        name = url.rsplit("/", 1)[1]
        admin = sa.create_engine(database.url_of(self.url), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                word = "true" if allowed else "false"
                conn.execute(sa.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {word}'))
                if not allowed:
                    conn.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = :n"
                        ),
                        {"n": name},
                    )
        finally:
            admin.dispose()

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self._as, *argv], capture_output=True, text=True, timeout=START_SECONDS, check=False
        )
        if done.returncode != 0:
            raise PostgresError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        bins = bindir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            # the server refuses root: Debian's postgres user owns the cluster
            if shutil.which("runuser") is None:
                raise PostgresError("runuser (util-linux) is needed to start PostgreSQL as root")
            for path in (self.root, self.sockets):
                shutil.chown(path, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run(
            str(bins / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        )
        self.port = free_port()
        log = self.log.open("ab")
        self._proc = subprocess.Popen(
            [
                *self._as,
                str(bins / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.sockets),
                "-c",
                f"listen_addresses={LOCALHOST}",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_SECONDS
        ready = [str(bins / "pg_isready"), "-h", LOCALHOST, "-p", str(self.port), "-q"]
        while subprocess.run(ready, check=False).returncode != 0:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PostgresError(f"PostgreSQL did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        self._createdb = [str(bins / "createdb"), "-h", LOCALHOST, "-p", str(self.port), "-U", USER]
        self._run(*self._createdb, DATABASE)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # PostgreSQL's fast shutdown, to the server itself (runuser does not pass it on)
            try:
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGINT)
            except (OSError, ValueError, IndexError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=START_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
