"""The operator API's OpenAPI document is valid and says what ROUTES does: every route, its
method, path parameters, the role it needs, and no route that is not there."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from openapi_spec_validator import validate
from twelvefactor_services.management.http_api import ROUTES


def document() -> dict[str, Any]:
    text = resources.files("twelvefactor_services.management").joinpath("openapi.json")
    doc: dict[str, Any] = json.loads(text.read_text(encoding="utf-8"))
    return doc


def test_the_document_is_valid_openapi() -> None:
    validate(document())  # raises with the first problem


def test_the_document_and_the_routes_agree() -> None:
    doc = document()
    documented = {
        (method.upper(), path): op
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    routed = {(r.method, r.doc): r for r in ROUTES}
    assert sorted(set(routed) - set(documented)) == [], "routes missing from openapi.json"
    assert sorted(set(documented) - set(routed)) == [], "openapi.json names routes that are gone"
    for key, route in routed.items():
        op = documented[key]
        assert op["x-role"] == route.role, key
        assert (op.get("security") == []) == (route.role is None), key
        in_path = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert in_path == set(re.findall(r"\{(\w+)\}", route.doc)), key
        body = op.get("requestBody", {}).get("content", {})
        if route.upload:
            assert list(body) == ["application/octet-stream"], key
        elif body:
            assert list(body) == ["application/json"], key
