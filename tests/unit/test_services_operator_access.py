"""The operator API's request checks and the operator store, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest
from twelvefactor_services.management import operators
from twelvefactor_services.management.access import Refused, Site, bearer, check_request
from twelvefactor_services.management.operators import OperatorError
from twelvefactor_services.management.store import Db

SITE = Site.of(["mgmt.example.com", "127.0.0.1", "::1"], 9443)


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("mgmt.example.com", True),
        ("MGMT.example.com.:9443", True),
        ("127.0.0.1:9443", True),
        ("[::1]:9443", True),
        ("[0:0::1]", True),
        ("mgmt.example.com:9444", False),  # another port: another site
        ("attacker.example", False),
        ("127.0.0.2", False),
        ("mgmt.example.com@attacker.example", False),
        ("", False),
        (None, False),
    ],
)
def test_host(host: str | None, ok: bool) -> None:
    assert SITE.host_ok(host) is ok


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        ("https://mgmt.example.com:9443", True),
        ("https://[::1]:9443", True),
        ("https://mgmt.example.com", False),  # 443 is not this server's port
        ("http://mgmt.example.com:9443", False),
        ("https://attacker.example:9443", False),
        ("null", False),
        ("https://mgmt.example.com:9443/x", False),
    ],
)
def test_origin(origin: str, ok: bool) -> None:
    assert SITE.origin_ok(origin) is ok


def test_writes_need_json_and_reads_do_not() -> None:
    host = "127.0.0.1:9443"
    check_request(SITE, "GET", host, None, None, False)
    check_request(SITE, "DELETE", host, None, None, False)  # no body, no type to check
    check_request(SITE, "PUT", host, None, "application/json; charset=utf-8", True)
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None):
        with pytest.raises(Refused) as info:
            check_request(SITE, "POST", host, None, ctype, True)
        assert info.value.status == 415
    check_request(SITE, "POST", host, None, "application/octet-stream", True, upload=True)
    with pytest.raises(Refused):
        check_request(SITE, "POST", host, None, "application/json", True, upload=True)
    with pytest.raises(Refused) as info:
        check_request(SITE, "GET", host, "https://attacker.example", None, False)
    assert (info.value.status, info.value.error) == (403, "cross_origin")


def test_bearer() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer ") is None
    assert bearer(None) is None


@pytest.fixture
def db(tmp_path: Path) -> Db:
    return Db(tmp_path / "registry.db")


def test_tokens_expire_and_are_revoked(db: Db) -> None:
    operators.add_operator(db, "ana", "operator", None, 1000.0)
    made = operators.create_token(db, "ana", "ci", 1000.0, ttl=3600)
    who = operators.authenticate(db, made["token"], 1001.0)
    assert who is not None and (who.name, who.role, who.token) == ("ana", "operator", made["id"])
    assert operators.authenticate(db, made["token"], 1000.0 + 3600) is None
    forged = made["token"][:-1] + ("A" if made["token"][-1] != "A" else "B")
    assert operators.authenticate(db, forged, 1001.0) is None
    assert operators.authenticate(db, "tfm_nothing", 1001.0) is None
    long_lived = operators.create_token(db, "ana", "ci", 1000.0)
    operators.revoke_token(db, long_lived["id"], 2000.0)
    assert operators.authenticate(db, long_lived["token"], 2001.0) is None
    with pytest.raises(OperatorError, match="no token"):
        operators.revoke_token(db, long_lived["id"], 2002.0)


def test_passwords_are_scrypt_hashes_and_checked(db: Db) -> None:
    operators.add_operator(db, "bo", "viewer", "twelve chars!", 0.0)
    stored = db.execute("SELECT password FROM operators WHERE name = 'bo'").fetchone()[0]
    assert stored.startswith("scrypt$") and "twelve" not in stored
    assert operators.login(db, "bo", "twelve chars!", 10.0) is not None
    assert operators.login(db, "bo", "twelve chars?", 10.0) is None
    assert operators.login(db, "nobody", "twelve chars!", 10.0) is None
    with pytest.raises(OperatorError, match="12 to 1024 characters"):
        operators.add_operator(db, "cy", "viewer", "short", 0.0)


def test_names_roles_and_the_last_admin(db: Db) -> None:
    with pytest.raises(OperatorError, match="operator name 'Root!'"):
        operators.add_operator(db, "Root!", "admin", None, 0.0)
    with pytest.raises(OperatorError, match="role 'root': one of viewer, operator, admin"):
        operators.add_operator(db, "root", "root", None, 0.0)
    operators.add_operator(db, "root", "admin", None, 0.0)
    with pytest.raises(OperatorError, match="exists"):
        operators.add_operator(db, "root", "viewer", None, 0.0)
    with pytest.raises(OperatorError, match="last admin"):
        operators.remove_operator(db, "root", 1.0)
    operators.add_operator(db, "deputy", "admin", None, 0.0)
    operators.remove_operator(db, "root", 1.0)
    assert [o["name"] for o in operators.list_operators(db)] == ["deputy"]
    # the name may be given again later; the audit log keeps what the first one did
    operators.add_operator(db, "root", "viewer", None, 2.0)
    assert operators.get_operator(db, "root") == {
        "name": "root",
        "role": "viewer",
        "password": False,
        "created": 2.0,
    }


def test_the_audit_log_pages_back_and_keeps_the_newest(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(operators, "AUDIT_KEPT", 1500)
    for i in range(3000):
        operators.record(db, float(i), None, "PUT", f"/x/{i}", 401)
    newest = operators.audit(db, limit=10)
    assert [e["path"] for e in newest[:2]] == ["/x/2999", "/x/2998"]
    older = operators.audit(db, limit=2, before=newest[-1]["id"])
    assert [e["path"] for e in older] == ["/x/2989", "/x/2988"]
    count = db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    assert 1500 <= count <= 2500  # pruned every 1000 entries to the newest AUDIT_KEPT
