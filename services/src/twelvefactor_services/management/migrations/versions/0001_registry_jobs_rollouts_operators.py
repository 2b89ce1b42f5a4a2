"""The registry (devices, online history, configuration, enrolments, health samples,
events, tunnel liveness and peers), update jobs, rollouts, operators, tokens and the
audit log: the schema the SQLite registries knew before the migrations, made, or
completed for a registry made by an older version (the columns it lacks are added).

Revision ID: 0001
Revises:
"""

import re

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

EVENTS_KEPT = 10_000  # rows of `events` kept, newest (registry.py)

# Written as SQLite spells it; PostgreSQL's types by `_postgres` (REAL is 4 bytes there).
TABLES = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    online INTEGER,
    last_online_change REAL,
    health TEXT,
    health_ts REAL,
    meta TEXT,
    meta_ts REAL,
    session_online INTEGER,             -- what its sessions last said (online is this and:)
    tunnel_quiet_since REAL,            -- the hub found its tunnel quiet, tunnelstate.py)
    checkin_due REAL,                   -- asleep: when it said it will be back (service clock)
    checkin_said REAL                   -- the device time stamp of that announcement
);
CREATE TABLE IF NOT EXISTS online_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL REFERENCES devices(id),
    online INTEGER NOT NULL,
    reason TEXT,
    ts REAL NOT NULL,
    device_ts REAL
);
CREATE INDEX IF NOT EXISTS online_history_device ON online_history(device, id);
CREATE TABLE IF NOT EXISTS config_groups (
    name TEXT PRIMARY KEY,
    overlay TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS config_members (
    device TEXT PRIMARY KEY,            -- a device is in at most one group
    grp TEXT NOT NULL REFERENCES config_groups(name)
);
CREATE TABLE IF NOT EXISTS enrolments (
    device TEXT PRIMARY KEY,
    hardware TEXT,                      -- JSON {board, revision} from the device's request
    tags TEXT NOT NULL,                 -- JSON list, sorted
    certificate_serial TEXT,            -- hex
    enrolled REAL,                      -- NULL: made before enrolment existed, retired since
    retired REAL,                       -- when it was decommissioned, or NULL
    retired_group TEXT                  -- the fleet group it was in then
);
CREATE TABLE IF NOT EXISTS device_config (
    device TEXT PRIMARY KEY,
    overlay TEXT,                       -- the device's own overlay (JSON), or NULL
    version INTEGER NOT NULL,           -- desired version: only ever goes up
    desired TEXT NOT NULL,              -- effective configuration of that version (JSON)
    updated REAL NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,  -- the version last published (retained)
    reported_version INTEGER,
    reported_status TEXT,
    reported_error TEXT,
    reported_ts REAL
);
CREATE TABLE IF NOT EXISTS health_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    ts REAL NOT NULL,                   -- the report's own time (device clock)
    load1 REAL,
    memory_available_kb INTEGER,
    memory_total_kb INTEGER,
    data_free_bytes INTEGER,
    data_total_bytes INTEGER,
    queue_depth INTEGER,
    queue_dropped INTEGER
);
CREATE INDEX IF NOT EXISTS health_samples_device ON health_samples(device, id);
-- Changes no other table keeps a history of (job states, configuration reports) for the
-- events feed (online changes, rollout events and the audit log are read where they are).
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,                   -- the service's clock
    kind TEXT NOT NULL,                 -- job, config
    device TEXT,
    subject TEXT,                       -- the job id, the configuration version
    state TEXT,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS tunnel_liveness (
    device TEXT PRIMARY KEY,
    alive INTEGER NOT NULL,
    last_rx REAL NOT NULL,              -- wall clock: when the hub last received from it
    seq INTEGER NOT NULL                -- order of changes, for the reader
);
CREATE INDEX IF NOT EXISTS tunnel_liveness_seq ON tunnel_liveness(seq);
CREATE TABLE IF NOT EXISTS tunnel_peers (
    device TEXT PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    address_v4 TEXT NOT NULL UNIQUE,
    address_v6 TEXT UNIQUE,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS update_jobs (
    id TEXT PRIMARY KEY,
    artifact TEXT NOT NULL,             -- sha256 of the .swu
    target TEXT NOT NULL,               -- "device:<id>" or "group:<name>"
    created REAL NOT NULL,
    install_at REAL                     -- a download-only job installs from then on
);
CREATE TABLE IF NOT EXISTS device_jobs (
    job TEXT NOT NULL REFERENCES update_jobs(id),
    device TEXT NOT NULL,
    state TEXT NOT NULL,
    percent INTEGER,
    reason TEXT,
    updated REAL NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    install TEXT NOT NULL DEFAULT 'now', -- now, hold (download only) or cancel (a held job)
    sent_bytes INTEGER NOT NULL DEFAULT 0, -- what the artifact server sent the device for it
    path TEXT, -- the artifact the device last said it is on: delta or full
    fallback TEXT, -- why the device gave the delta up for the full .swu
    published_at REAL, -- when the job document last went out
    PRIMARY KEY (job, device)
);
CREATE INDEX IF NOT EXISTS device_jobs_device ON device_jobs(device, state);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,                 -- the request (JSON)
    state TEXT NOT NULL,
    reason TEXT,
    phase INTEGER NOT NULL DEFAULT -1,  -- current phase, 0-based, -1 before the start
    phases INTEGER NOT NULL,
    created REAL NOT NULL,
    created_by TEXT,
    updated REAL NOT NULL,
    accepted_failed INTEGER NOT NULL DEFAULT 0,
    accepted_executed INTEGER NOT NULL DEFAULT 0,
    go REAL                             -- download only: when the installs began
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout TEXT NOT NULL REFERENCES rollouts(id),
    device TEXT NOT NULL,
    phase INTEGER NOT NULL,
    job TEXT,                           -- set when its phase starts
    skipped TEXT,                       -- why it got no job
    PRIMARY KEY (rollout, device)
);
CREATE TABLE IF NOT EXISTS rollout_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout TEXT NOT NULL,
    ts REAL NOT NULL,
    state TEXT NOT NULL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS operators (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password TEXT,                      -- scrypt$n$r$p$salt$hash, or NULL: tokens only
    created REAL NOT NULL,
    disabled REAL                       -- when removed, kept for the audit log's names
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    operator TEXT NOT NULL REFERENCES operators(name),
    secret_sha256 TEXT NOT NULL,
    label TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,                       -- NULL: until revoked
    last_used REAL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    operator TEXT,                      -- NULL: not authenticated
    token TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT                         -- JSON: the request body (passwords left out)
);
"""

# Registries made by older versions lack these (table, column, declaration).
ADDED_LATER = (
    ("devices", "session_online", "INTEGER"),
    ("devices", "tunnel_quiet_since", "REAL"),
    ("devices", "checkin_due", "REAL"),
    ("devices", "checkin_said", "REAL"),
    ("update_jobs", "install_at", "REAL"),
    ("device_jobs", "install", "TEXT NOT NULL DEFAULT 'now'"),
    ("device_jobs", "sent_bytes", "INTEGER NOT NULL DEFAULT 0"),
    ("device_jobs", "path", "TEXT"),
    ("device_jobs", "fallback", "TEXT"),
    ("device_jobs", "published_at", "REAL"),
    ("rollouts", "go", "REAL"),
)

# device_jobs keeps each job's current state only: a trigger records every change of it
# in `events`, from whichever code path (jobstore) makes it.
_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER IF NOT EXISTS device_jobs_event_insert AFTER INSERT ON device_jobs BEGIN
    INSERT INTO events (ts, kind, device, subject, state, reason)
        VALUES ({_SQLITE_NOW}, 'job', new.device, new.job, new.state, new.reason);
    DELETE FROM events WHERE id <= last_insert_rowid() - {EVENTS_KEPT};
END""",
    f"""CREATE TRIGGER IF NOT EXISTS device_jobs_event_update AFTER UPDATE OF state ON device_jobs
    WHEN old.state IS NOT new.state BEGIN
    INSERT INTO events (ts, kind, device, subject, state, reason)
        VALUES ({_SQLITE_NOW}, 'job', new.device, new.job, new.state, new.reason);
    DELETE FROM events WHERE id <= last_insert_rowid() - {EVENTS_KEPT};
END""",
]
POSTGRES_TRIGGERS = [
    f"""CREATE FUNCTION device_jobs_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    added BIGINT;
BEGIN
    IF TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM NEW.state THEN
        INSERT INTO events (ts, kind, device, subject, state, reason)
            VALUES (extract(epoch FROM clock_timestamp()), 'job', NEW.device, NEW.job,
                    NEW.state, NEW.reason)
            RETURNING id INTO added;
        DELETE FROM events WHERE id <= added - {EVENTS_KEPT};
    END IF;
    RETURN NULL;
END
$$""",
    "CREATE TRIGGER device_jobs_event AFTER INSERT OR UPDATE OF state ON device_jobs"
    " FOR EACH ROW EXECUTE FUNCTION device_jobs_event()",
]


def _postgres(statement: str) -> str:
    statement = statement.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    )
    statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
    return re.sub(r"\bINTEGER\b", "BIGINT", statement)


def _statements() -> list[str]:
    return [s.strip() for s in TABLES.split(";") if s.strip()]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for statement in _statements():
            bind.exec_driver_sql(_postgres(statement))
        for statement in POSTGRES_TRIGGERS:
            bind.exec_driver_sql(statement)
        return
    for statement in _statements():  # IF NOT EXISTS: an older registry's tables stay
        bind.exec_driver_sql(statement)
    for table, column, declaration in ADDED_LATER:
        have = {r[1] for r in bind.exec_driver_sql(f"PRAGMA table_info({table})")}
        if column not in have:
            bind.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            if column == "session_online":  # what an older registry shows, its sessions said
                bind.exec_driver_sql("UPDATE devices SET session_online = online")
    for statement in SQLITE_TRIGGERS:
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.exec_driver_sql("DROP FUNCTION device_jobs_event() CASCADE")
    tables = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", TABLES)
    for table in reversed(tables):
        op.drop_table(table)
