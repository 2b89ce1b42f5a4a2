"""How `twelvefactor-solution archive` shows a payload: text when it is text."""

from __future__ import annotations

import base64

from twelvefactor_services.solution.cli import _payload_text


def test_text_is_shown_and_anything_else_stays_base64() -> None:
    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    assert _payload_text(b64(b'{"t": 20.1}')) == '{"t": 20.1}'
    assert _payload_text(b64("Grüße".encode())) == "Grüße"
    for raw in (
        b"\xff\xfe\x00",
        b"line\nbreak",
        b"\x1b[31mred",
    ):  # binary, or would garble a terminal
        assert _payload_text(b64(raw)) == f"base64:{b64(raw)}"
