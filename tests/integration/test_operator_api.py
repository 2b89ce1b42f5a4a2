"""The operator API (issue 19, finding 10): HTTPS, operators with roles, tokens, Host, Origin
and Content-Type checks, and an audit log of every change, readable through the API."""

from __future__ import annotations

import json
import re
import shutil
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from helpers import https_request
from twelvefactor_services.management import http_api
from twelvefactor_services.management.api_client import ManagementClient
from twelvefactor_services.management.cli import main as management_cli

from testbed.pace import PACE, ROUND_TRIP
from testbed.stack import ServiceProcess, Stack

pytestmark = pytest.mark.integration

SAMPLES = {
    "{id}": "dev-001",
    "{name}": "field",
    "{device}": "dev-001",
}


def raw(
    svc: ServiceProcess,
    stack: Stack,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request with exactly these headers (Host included), over TLS checked against the CA."""
    assert svc.api is not None
    answer = https_request(
        svc.api.port, stack.pki.ca_cert, method, path, body=body, headers=headers
    )
    return answer.status, answer.json()


def client(svc: ServiceProcess, stack: Stack, token: str | None) -> ManagementClient:
    assert svc.api is not None
    return ManagementClient(svc.api.url, token=token, ca=stack.pki.ca_cert)


def make_operator(
    admin: ManagementClient, svc: ServiceProcess, stack: Stack, name: str, role: str
) -> ManagementClient:
    admin.call("POST", "/operators", {"name": name, "role": role})
    token = admin.call("POST", "/tokens", {"label": "test", "operator": name})["token"]
    return client(svc, stack, token)


@pytest.fixture
def admin(stack: Stack, management: ServiceProcess) -> ManagementClient:
    c = client(management, stack, stack.admin_token())
    c.call("PUT", "/groups/field/config", {})
    return c


def test_the_reported_cross_site_write_is_refused_and_changes_nothing(
    stack: Stack, management: ServiceProcess, admin: ManagementClient
) -> None:
    """The finding: Host attacker.example, text/plain, a foreign Origin, answered 200 before."""
    token = stack.admin_token()
    port = management.api_port
    assert port is not None
    body = b'{"agent": {"keepalive": 5}}'
    before = admin.get("/groups/field")
    forged = {
        "Host": "attacker.example",
        "Content-Type": "text/plain",
        "Origin": "https://attacker.example",
        "Authorization": f"Bearer {token}",
    }
    status, answer = raw(management, stack, "PUT", "/groups/field/config", body, forged)
    assert status == 421 and answer["error"] == "wrong_host"
    # each check on its own, with everything else right
    right = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    cases = [
        ({**right, "Host": "attacker.example"}, 421, "wrong_host"),
        ({**right, "Host": f"localhost:{port + 1}"}, 421, "wrong_host"),
        ({**right, "Origin": "https://attacker.example"}, 403, "cross_origin"),
        ({**right, "Origin": f"http://127.0.0.1:{management.api_port}"}, 403, "cross_origin"),
        ({**right, "Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (
            {**right, "Content-Type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
        ({"Content-Type": "application/json"}, 401, "unauthorized"),
        (
            {**right, "Authorization": "Bearer tfm_0000000000000000_" + "A" * 43},
            401,
            "unauthorized",
        ),
        ({**right, "Authorization": "Basic YWRtaW46YWRtaW4="}, 401, "unauthorized"),
    ]
    for headers, want, error in cases:
        status, answer = raw(management, stack, "PUT", "/groups/field/config", body, headers)
        assert (status, answer["error"]) == (want, error), headers
    assert admin.get("/groups/field") == before
    # the same request from the API's own origin, by name or address, is accepted
    ok = {**right, "Origin": f"https://localhost:{management.api_port}"}
    ok["Host"] = f"localhost:{management.api_port}"
    status, answer = raw(management, stack, "PUT", "/groups/field/config", body, ok)
    assert status == 200, answer
    # every one of those writes is in the audit log (and the fixture's), with who made it
    entries = admin.get("/audit", limit="20")
    statuses = [e["status"] for e in entries if e["path"] == "/groups/field/config"]
    assert sorted(statuses) == sorted([200, 200, 421, 421, 421, 403, 403, 415, 415, 401, 401, 401])
    assert entries[0]["operator"] == "admin" and entries[0]["detail"] == {"agent": {"keepalive": 5}}


def test_plain_http_gets_no_answer(stack: Stack, management: ServiceProcess) -> None:
    assert management.api_port is not None
    limit = PACE.limit(ROUND_TRIP)
    with socket.create_connection(("127.0.0.1", management.api_port), timeout=limit) as s:
        s.sendall(b"GET /devices HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reply = s.recv(4096)
    assert not reply.startswith(b"HTTP/"), reply  # a TLS alert or nothing, never HTTP


def test_every_route_but_health_and_login_needs_a_token(
    stack: Stack, management: ServiceProcess
) -> None:
    anonymous = client(management, stack, None)
    checked = 0
    for route in http_api.ROUTES:
        path = route.doc
        path = path.replace("/jobs/{id}/{action}", "/jobs/j-000000000000/install")
        path = path.replace("/artifacts/{id}", "/artifacts/" + "0" * 64)
        path = path.replace("/jobs/{id}", "/jobs/j-000000000000")
        path = path.replace("/tokens/{id}", "/tokens/" + "0" * 16)
        path = path.replace("/rollouts/{id}", "/rollouts/r-000000000000")
        path = path.replace("{action}", "pause").replace("{part}", "zck")
        for key, value in SAMPLES.items():
            path = path.replace(key, value)
        assert "{" not in path, path
        body = {} if route.method in ("POST", "PUT") and not route.upload else None
        status, answer = anonymous.request(route.method, path, body)
        if route.role is None:
            assert status != 401, (route.method, path)
        else:
            assert (status, answer["error"]) == (401, "unauthorized"), (route.method, path)
            checked += 1
    assert checked == len(http_api.ROUTES) - 2


def test_roles_decide_per_request(
    stack: Stack, management: ServiceProcess, admin: ManagementClient
) -> None:
    viewer = make_operator(admin, management, stack, "vera", "viewer")
    operator = make_operator(admin, management, stack, "otto", "operator")
    assert viewer.get("/whoami")["role"] == "viewer"
    served = viewer.get("/openapi.json")
    assert served["openapi"].startswith("3.") and "/rollouts/{id}/{action}" in served["paths"]
    assert viewer.get("/groups/field")["name"] == "field"
    status, answer = viewer.request("PUT", "/groups/field/config", {"agent": {"keepalive": 7}})
    assert (status, answer["error"]) == (403, "forbidden")
    assert answer["problems"] == ["PUT /groups/field/config needs the operator role"]
    assert viewer.request("GET", "/audit")[0] == 403
    assert operator.request("PUT", "/groups/field/config", {"agent": {"keepalive": 7}})[0] == 200
    assert operator.request("GET", "/audit")[0] == 200
    status, _ = operator.request("POST", "/operators", {"name": "eve", "role": "admin"})
    assert status == 403
    status, _ = operator.request("PUT", "/operators/otto", {"role": "admin"})
    assert status == 403  # not even for oneself
    assert operator.request("GET", "/tokens", query={"operator": "*"})[0] == 403
    # an admin demotes the operator: the same token is a viewer's from the next request
    admin.call("PUT", "/operators/otto", {"role": "viewer"})
    assert operator.request("PUT", "/groups/field/config", {})[0] == 403
    # removing an operator revokes their tokens at once
    admin.call("DELETE", "/operators/vera")
    assert viewer.request("GET", "/whoami")[0] == 401
    # the last admin stays one
    status, answer = admin.request("DELETE", "/operators/admin")
    assert (status, answer["problems"]) == (409, ["the last admin cannot be removed"])
    status, answer = admin.request("PUT", "/operators/admin", {"role": "viewer"})
    assert (status, answer["problems"]) == (409, ["the last admin keeps the admin role"])


def test_tokens_for_scripts_are_shown_once_and_revocable(
    stack: Stack, management: ServiceProcess, admin: ManagementClient
) -> None:
    made = admin.call("POST", "/tokens", {"label": "nightly export", "ttl": 3600})
    assert re.fullmatch(r"tfm_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", made["token"])
    script = client(management, stack, made["token"])
    assert script.get("/whoami") == {"name": "admin", "role": "admin", "token": made["id"]}
    listed = admin.get("/tokens")
    assert made["id"] in [t["id"] for t in listed]
    assert all("token" not in t and "secret_sha256" not in t for t in listed)
    # the database holds only the secret's hash
    secret = made["token"].rsplit("_", 1)[1]
    assert secret.encode() not in Path(stack.registry_db).read_bytes()
    admin.call("DELETE", f"/tokens/{made['id']}")
    assert script.request("GET", "/whoami")[0] == 401


def test_password_login_and_too_many_wrong_passwords(
    stack: Stack, management: ServiceProcess, admin: ManagementClient
) -> None:
    admin.call(
        "POST", "/operators", {"name": "pat", "role": "viewer", "password": "correct horse 1"}
    )
    anonymous = client(management, stack, None)
    status, answer = anonymous.request("POST", "/login", {"name": "pat", "password": "wrong"})
    assert (status, answer["error"]) == (401, "unauthorized")
    made = anonymous.call("POST", "/login", {"name": "pat", "password": "correct horse 1"})
    assert client(management, stack, made["token"]).get("/whoami")["name"] == "pat"
    assert made["expires"] - made["created"] == pytest.approx(12 * 3600)
    for _ in range(http_api.LOGIN_FAILURES):
        anonymous.request("POST", "/login", {"name": "pat", "password": "guess"})
    status, answer = anonymous.request(
        "POST", "/login", {"name": "pat", "password": "correct horse 1"}
    )
    assert (status, answer["error"]) == (429, "too_many_attempts")
    # the audit log has the attempts, never the passwords
    entries = admin.get("/audit", limit="50")
    logins = [e for e in entries if e["path"] == "/login"]
    assert {e["status"] for e in logins} == {201, 401, 429}
    assert "correct horse" not in json.dumps(entries) and "guess" not in json.dumps(entries)
    added = next(e for e in entries if e["path"] == "/operators")
    assert added["detail"]["password"] == "(not recorded)"


def test_the_cli_works_from_a_laptop_with_a_login(
    stack: Stack,
    management: ServiceProcess,
    admin: ManagementClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No registry file, no service host: an address, the CA certificate and a password."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "laptop"))
    for name in ("TWELVEFACTOR_API_URL", "TWELVEFACTOR_API_TOKEN", "TWELVEFACTOR_API_CA"):
        monkeypatch.delenv(name, raising=False)
    admin.call(
        "POST", "/operators", {"name": "lee", "role": "operator", "password": "lee's long pass"}
    )
    (tmp_path / "pw").write_text("lee's long pass\n")
    assert management.api is not None
    url = management.api.url
    ca = str(stack.pki.ca_cert)
    assert (
        management_cli(
            ["login", url, "--user", "lee", "--ca", ca, "--password-file", str(tmp_path / "pw")]
        )
        == 0
    )
    saved = tmp_path / "laptop" / "twelvefactor" / "management.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    capsys.readouterr()
    assert management_cli(["whoami"]) == 0
    assert capsys.readouterr().out.startswith("lee (operator) at https://127.0.0.1:")
    assert (
        management_cli(
            ["config", "group", "set", "field", "--set-json", '{"agent": {"keepalive": 9}}']
        )
        == 0
    )
    capsys.readouterr()
    assert management_cli(["audit", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert entries[0]["operator"] == "lee" and entries[0]["path"] == "/groups/field/config"
    # an overlay the agent's rules refuse is refused before it is sent
    assert management_cli(["config", "group", "set", "field", "--set-json", '{"nope": 1}']) == 2
    assert "nope" in capsys.readouterr().err
    assert management_cli(["operator", "list"]) == 1
    assert "needs the admin role" in capsys.readouterr().err
    assert management_cli(["logout"]) == 0
    assert not saved.exists()
    assert management_cli(["devices", "--url", url, "--ca", ca]) == 1
    assert "send Authorization: Bearer TOKEN" in capsys.readouterr().err


def test_a_fault_of_the_service_is_a_500_and_audited(
    stack: Stack, management: ServiceProcess, admin: ManagementClient, tmp_path: Path
) -> None:
    store = stack.artifact_dir
    if store.is_dir():
        shutil.rmtree(store)
    store.write_text("not a folder\n")  # the artifact store cannot be written
    try:
        upload = tmp_path / "a.swu"
        upload.write_bytes(b"x" * 100)
        status, answer = admin.request("POST", "/artifacts", upload=upload.open("rb"), size=100)
        assert (status, answer["error"]) == (500, "internal"), answer
        assert admin.get("/whoami")["name"] == "admin"  # the service goes on
        entry = admin.get("/audit", limit="1")[0]
        assert (entry["path"], entry["status"], entry["operator"]) == ("/artifacts", 500, "admin")
    finally:
        store.unlink()


def test_artifact_delete_from_the_cli(
    stack: Stack, management: ServiceProcess, admin: ManagementClient, tmp_path: Path
) -> None:
    """`artifact delete` (issue 13): refused with the reason while an unfinished job uses the
    artifact, done otherwise; both audited."""
    from test_artifacts import make_swu
    from test_rollouts import cli, run_cli

    def add(name: str, version: str) -> dict[str, Any]:
        swu = make_swu(tmp_path / name, version, size=1000)
        added: dict[str, Any] = json.loads(
            cli(stack, management, "artifact", "add", "--json", str(swu))
        )
        return added

    used, free = add("u.swu", "2.0"), add("f.swu", "2.1")
    job = admin.call("POST", "/jobs", {"artifact": used["sha256"], "device": "dev-001"})
    refused = run_cli(stack, management, "artifact", "delete", used["sha256"][:8])
    assert refused.returncode == 1, refused.stderr
    assert f"in use by job {job['id']} (unfinished)" in refused.stderr, refused.stderr
    shown = cli(stack, management, "artifact", "show", used["sha256"][:8])
    assert f"used by job {job['id']} (unfinished)" in shown
    assert "signature not checked (no --artifact-signing-cert)" in shown
    gone = cli(stack, management, "artifact", "delete", free["sha256"][:8])
    assert gone == f"deleted artifact {free['sha256']} (version 2.1)\n"
    listed = json.loads(cli(stack, management, "artifact", "list", "--json"))
    assert [a["sha256"] for a in listed] == [used["sha256"]]
    assert run_cli(stack, management, "artifact", "delete", free["sha256"]).returncode == 1
    entries = [e for e in admin.get("/audit") if e["method"] == "DELETE"]
    assert [(e["status"], e["detail"]) for e in reversed(entries)] == [
        (409, {"sha256": used["sha256"]}),
        (200, {"sha256": free["sha256"], "version": "2.1"}),
        (404, None),  # gone: no artifact by that id
    ]
