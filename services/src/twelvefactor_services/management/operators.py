"""Operators, their API tokens and the audit log, in the management database (store.py).

An operator has a role (viewer < operator < admin: each may do what the ones
before it may) and optionally a password (for `POST /login`, which hands out a
short-lived token). Scripts use long-lived tokens made for them. A token is
`tfm_<id>_<secret>`: the id finds the row, only the secret's SHA-256 is kept,
so a copy of the database does not hold usable credentials. Passwords are
kept as scrypt hashes. Every change made through the API lands in `audit`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from twelvefactor_services.management.store import Db, Row

ROLES = ("viewer", "operator", "admin")
NAME_RE = re.compile(r"[a-z][a-z0-9._-]{0,63}")
TOKEN_RE = re.compile(r"tfm_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
TOKEN_ID_RE = re.compile(r"[0-9a-f]{16}")
LABEL_MAX = 100
PASSWORD_MIN = 12
PASSWORD_MAX = 1024
LOGIN_TTL = 12 * 3600.0  # a token from a password login lasts a working day
AUDIT_KEPT = 100_000  # newest entries kept
AUDIT_PAGE_MAX = 1000
_SCRYPT = (2**14, 8, 1)  # n, r, p: 16 MiB and ~50 ms per check


class OperatorError(Exception):
    """A request about operators or tokens that cannot be honoured; ``status`` is HTTP's."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Principal:
    """Who is asking: the operator, their role and the token used."""

    name: str
    role: str
    token: str

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def check_name(name: object) -> str:
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise OperatorError(
            f"operator name {name!r}: lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter, at most 64"
        )
    return name


def check_role(role: object) -> str:
    if role not in ROLES:
        raise OperatorError(f"role {role!r}: one of {', '.join(ROLES)}")
    assert isinstance(role, str)
    return role


def check_password(password: object) -> str:
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise OperatorError(f"a password has {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    return password


def hash_password(password: str) -> str:
    n, r, p = _SCRYPT
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def password_matches(stored: str | None, password: str) -> bool:
    if stored is None:
        hashlib.scrypt(b"-", salt=b"-" * 16, n=_SCRYPT[0], r=_SCRYPT[1], p=_SCRYPT[2])
        return False  # the same work either way: no timing tells which names exist
    kind, n, r, p, salt, digest = stored.split("$")
    if kind != "scrypt":
        return False
    got = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    return hmac.compare_digest(got, base64.b64decode(digest))


def _secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _active(db: Db, name: str) -> Row | None:
    row: Row | None = db.execute(
        "SELECT * FROM operators WHERE name = ? AND disabled IS NULL", (name,)
    ).fetchone()
    return row


def add_operator(
    db: Db, name: object, role: object, password: str | None, now: float
) -> dict[str, Any]:
    name, role = check_name(name), check_role(role)
    stored = None if password is None else hash_password(check_password(password))
    with db.write():
        old = db.execute("SELECT disabled FROM operators WHERE name = ?", (name,)).fetchone()
        if old is not None and old["disabled"] is None:
            raise OperatorError(f"operator {name!r} exists", 409)
        # a removed name may be given again: the audit log keeps what it did before
        db.execute(
            "INSERT INTO operators (name, role, password, created, disabled) "
            "VALUES (?, ?, ?, ?, NULL) ON CONFLICT (name) DO UPDATE SET role = excluded.role,"
            " password = excluded.password, created = excluded.created, disabled = NULL",
            (name, role, stored, now),
        )
    return get_operator(db, name) or {}


def get_operator(db: Db, name: str) -> dict[str, Any] | None:
    row = _active(db, name)
    if row is None:
        return None
    return {
        "name": row["name"],
        "role": row["role"],
        "password": row["password"] is not None,
        "created": row["created"],
    }


def list_operators(db: Db) -> list[dict[str, Any]]:
    names = [r[0] for r in db.execute("SELECT name FROM operators WHERE disabled IS NULL")]
    return [op for n in sorted(names) if (op := get_operator(db, n)) is not None]


def _admins_left(db: Db, without: str) -> int:
    row = db.execute(
        "SELECT COUNT(*) FROM operators WHERE role = 'admin' AND disabled IS NULL AND name != ?",
        (without,),
    ).fetchone()
    return int(row[0])


def change_operator(
    db: Db,
    name: str,
    *,
    role: str | None = None,
    password: str | None = None,
) -> dict[str, Any]:
    if role is not None:
        check_role(role)
    stored = None if password is None else hash_password(check_password(password))
    with db.write():
        row = _active(db, name)
        if row is None:
            raise OperatorError(f"no operator {name!r}", 404)
        if role is not None and role != "admin" and row["role"] == "admin":
            if _admins_left(db, name) == 0:
                raise OperatorError("the last admin keeps the admin role", 409)
            db.execute("UPDATE operators SET role = ? WHERE name = ?", (role, name))
        elif role is not None:
            db.execute("UPDATE operators SET role = ? WHERE name = ?", (role, name))
        if stored is not None:
            db.execute("UPDATE operators SET password = ? WHERE name = ?", (stored, name))
    return get_operator(db, name) or {}


def remove_operator(db: Db, name: str, now: float) -> None:
    """Disable the operator and revoke every token of theirs."""
    with db.write():
        row = _active(db, name)
        if row is None:
            raise OperatorError(f"no operator {name!r}", 404)
        if row["role"] == "admin" and _admins_left(db, name) == 0:
            raise OperatorError("the last admin cannot be removed", 409)
        db.execute("UPDATE operators SET disabled = ?, password = NULL WHERE name = ?", (now, name))
        db.execute(
            "UPDATE api_tokens SET revoked = ? WHERE operator = ? AND revoked IS NULL", (now, name)
        )


def create_token(
    db: Db,
    operator: str,
    label: str,
    now: float,
    ttl: float | None = None,
) -> dict[str, Any]:
    """A new token for ``operator``; the answer holds the secret, the only time it is shown."""
    if not isinstance(label, str) or not 0 < len(label) <= LABEL_MAX or not label.isprintable():
        raise OperatorError(f"a token label is 1 to {LABEL_MAX} printable characters")
    if ttl is not None and not 60 <= ttl <= 10 * 365 * 86400:
        raise OperatorError("a token lasts from 60 s to 10 years (or until revoked)")
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    expires = None if ttl is None else now + ttl
    with db.write():
        if _active(db, operator) is None:
            raise OperatorError(f"no operator {operator!r}", 404)
        db.execute(
            "INSERT INTO api_tokens (id, operator, secret_sha256, label, created, expires) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (token_id, operator, _secret_sha256(secret), label, now, expires),
        )
    found = get_token(db, token_id)
    assert found is not None
    return {**found, "token": f"tfm_{token_id}_{secret}"}


def get_token(db: Db, token_id: str) -> dict[str, Any] | None:
    row = db.execute(
        "SELECT id, operator, label, created, expires, last_used, revoked "
        "FROM api_tokens WHERE id = ?",
        (token_id,),
    ).fetchone()
    return None if row is None else dict(row)


def list_tokens(db: Db, operator: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT id FROM api_tokens WHERE revoked IS NULL"
    args: tuple[str, ...] = ()
    if operator is not None:
        sql, args = sql + " AND operator = ?", (operator,)
    ids = [r[0] for r in db.execute(sql + " ORDER BY created", args)]
    return [t for i in ids if (t := get_token(db, i)) is not None]


def revoke_token(db: Db, token_id: str, now: float) -> None:
    with db.write():
        cur = db.execute(
            "UPDATE api_tokens SET revoked = ? WHERE id = ? AND revoked IS NULL", (now, token_id)
        )
        if cur.rowcount == 0:
            raise OperatorError(f"no token {token_id!r}", 404)


def authenticate(db: Db, token: str, now: float) -> Principal | None:
    """The operator a bearer token stands for, or None (unknown, wrong, expired, revoked)."""
    m = TOKEN_RE.fullmatch(token)
    if m is None:
        return None
    row = db.execute(
        "SELECT t.id, t.secret_sha256, t.expires, t.revoked, t.last_used, o.name, o.role "
        "FROM api_tokens t JOIN operators o ON o.name = t.operator "
        "WHERE t.id = ? AND o.disabled IS NULL",
        (m.group(1),),
    ).fetchone()
    if row is None or not hmac.compare_digest(row["secret_sha256"], _secret_sha256(m.group(2))):
        return None
    if row["revoked"] is not None or (row["expires"] is not None and row["expires"] <= now):
        return None
    # last_used to the minute: a busy script must not make every GET a write (on SQLite
    # even an UPDATE that changes nothing waits for the write lock, which the consumer's
    # groups hold most of the time in a connect storm: API calls of seconds, fleet bench)
    if row["last_used"] is None or row["last_used"] < now - 60:
        db.execute(
            "UPDATE api_tokens SET last_used = ? WHERE id = ?"
            " AND (last_used IS NULL OR last_used < ?)",
            (now, row["id"], now - 60),
        )
    return Principal(row["name"], row["role"], row["id"])


def login(db: Db, name: str, password: str, now: float) -> dict[str, Any] | None:
    """A token for a password login, or None when the name or password is wrong."""
    row = _active(db, name) if NAME_RE.fullmatch(name) else None
    if not password_matches(None if row is None else row["password"], password):
        return None
    return create_token(db, name, "login", now, ttl=LOGIN_TTL)


def record(
    db: Db,
    now: float,
    who: Principal | None,
    method: str,
    path: str,
    status: int,
    detail: Any = None,
) -> None:
    """Append one entry to the audit log (and drop the oldest beyond AUDIT_KEPT)."""
    text = None if detail is None else json.dumps(detail, sort_keys=True)[:4096]
    with db.write():
        added = db.execute(
            "INSERT INTO audit (ts, operator, token, method, path, status, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                now,
                None if who is None else who.name,
                None if who is None else who.token,
                method,
                path,
                status,
                text,
            ),
        ).scalar()
        if added % 1000 == 0:
            db.execute("DELETE FROM audit WHERE id <= ?", (added - AUDIT_KEPT,))


def audit(db: Db, *, limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
    """Audit entries, newest first; ``before`` pages back from an entry's id."""
    rows = db.execute(
        "SELECT * FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?",
        (before if before is not None else 2**62, min(limit, AUDIT_PAGE_MAX)),
    ).fetchall()
    out = []
    for r in rows:
        entry = dict(r)
        entry["detail"] = None if r["detail"] is None else json.loads(r["detail"])
        out.append(entry)
    return out
