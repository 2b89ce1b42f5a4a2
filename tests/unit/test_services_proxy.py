"""The proxy's decisions without I/O: configuration file, request checks, the HTTP request."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from twelvefactor_services.solution import proxyconfig
from twelvefactor_services.solution.proxy import Plan, Refused, answer_ok, plan

CONFIG = proxyconfig.parse(
    {
        "groups": {"field": ["dev-a"]},
        "services": {
            "weather": {
                "url": "https://api.example.com/v2/",
                "headers": {"Authorization": "Bearer SECRET"},
                "query": {"appid": "APPID"},
                "methods": ["GET", "POST"],
                "timeout": 5,
                "groups": ["field"],
            },
            "maps": {"url": "http://10.0.0.5:8080", "devices": ["dev-b"]},
        },
    }
)
REPLY = "sol/dev-a/down/proxy"


def request(**kw: Any) -> bytes:
    return json.dumps({"v": 1, "service": "weather", **kw}).encode()


def decide(payload: bytes, device: str = "dev-a", topic: str | None = REPLY) -> Plan | Refused:
    return plan(CONFIG, device, payload, topic, b"id-1")


def test_config_file_problems_are_named() -> None:
    with pytest.raises(proxyconfig.ProxyConfigError) as info:
        proxyconfig.parse(
            {
                "services": {
                    "Bad Name": {"url": "ftp://x"},
                    "w": {"url": "http://h", "groups": ["nope"], "timeout": 0, "colour": 1},
                },
                "extra": 1,
            }
        )
    problems = info.value.problems
    assert "proxy: extra: unknown key (expected [groups] and [services.NAME])" in problems
    assert any(p.startswith("proxy: services.Bad Name: a service name") for p in problems)
    assert "proxy: services.Bad Name.url: expected an http(s) URL without query or user" in problems
    assert "proxy: services.w.groups: no group 'nope' in [groups]" in problems
    assert "proxy: services.w.timeout: seconds in 0.1..300" in problems
    assert "proxy: services.w.colour: unknown key" in problems


def test_a_good_request_becomes_the_configured_call_with_credentials() -> None:
    p = decide(
        request(
            method="POST",
            path="/now",
            query={"city": "Lyon", "appid": "forged"},
            headers={"Accept": "application/json", "Content-Type": "text/plain"},
            body=base64.b64encode(b"hi").decode(),
            timeout=30,
        )
    )
    assert isinstance(p, Plan)
    assert (p.upstream.host, p.upstream.port, p.upstream.scheme) == (
        "api.example.com",
        443,
        "https",
    )
    assert p.target == "/v2/now?city=Lyon&appid=APPID", "the device cannot override a credential"
    assert p.headers == {
        "accept": "application/json",
        "content-type": "text/plain",
        "Authorization": "Bearer SECRET",
    }
    assert (p.method, p.body, p.timeout, p.reply) == ("POST", b"hi", 5.0, (REPLY, b"id-1"))


@pytest.mark.parametrize(
    ("payload", "device", "error"),
    [
        (request(), "dev-b", "not_allowed"),
        (json.dumps({"v": 1, "service": "maps"}).encode(), "dev-a", "not_allowed"),
        (request(method="DELETE"), "dev-a", "not_allowed"),
        (json.dumps({"v": 1, "service": "traffic"}).encode(), "dev-a", "unknown_service"),
        (request(headers={"Authorization": "x"}), "dev-a", "bad_request"),
        (request(headers={"Host": "evil.example"}), "dev-a", "bad_request"),
        (request(path="/a/../../admin"), "dev-a", "bad_request"),
        (request(path="/a/%2e%2e/admin"), "dev-a", "bad_request"),
        # Issue 19, finding 11: what an upstream that decodes twice, or honours
        # path parameters (Tomcat, Spring), would read as "..".
        (request(path="/..;/admin"), "dev-a", "bad_request"),
        (request(path="/a/..%3b/admin"), "dev-a", "bad_request"),
        (request(path="/a/..%3B/admin"), "dev-a", "bad_request"),
        (request(path="/a/%252e%252e/admin"), "dev-a", "bad_request"),
        (request(path="/a/%25252e%25252e/admin"), "dev-a", "bad_request"),
        (request(path="/a;x=1/b"), "dev-a", "bad_request"),
        (request(path="//evil.example/x"), "dev-a", "bad_request"),
        (request(path="now"), "dev-a", "bad_request"),
        (request(body="***"), "dev-a", "bad_request"),
        (request(body=base64.b64encode(b"x" * (512 * 1024 + 1)).decode()), "dev-a", "too_large"),
        (b"not json", "dev-a", "bad_request"),
    ],
)
def test_refusals(payload: bytes, device: str, error: str) -> None:
    topic = f"sol/{device}/down/proxy"
    refused = plan(CONFIG, device, payload, topic, b"id")
    assert isinstance(refused, Refused) and refused.error == error
    assert refused.reply == (topic, b"id")


def test_answers_go_only_to_the_devices_own_topic() -> None:
    refused = decide(request(), topic="sol/dev-b/down/proxy")
    assert isinstance(refused, Refused) and refused.reply is None, "never to another device"
    refused = plan(CONFIG, "dev-a", request(), REPLY, None)
    assert isinstance(refused, Refused) and refused.reply is None


def test_message_expiry_shortens_the_timeout() -> None:
    p = plan(CONFIG, "dev-a", request(), REPLY, b"x", expiry=2)
    assert isinstance(p, Plan) and p.timeout == 2.0


def test_response_headers_are_filtered() -> None:
    doc = json.loads(
        answer_ok(200, [("Content-Type", "a/b"), ("Set-Cookie", "s"), ("Location", "u")], b"b")
    )
    assert doc == {
        "v": 1,
        "ok": True,
        "status": 200,
        "headers": {"content-type": "a/b"},
        "body": "Yg==",
    }
