"""The one parser every protocol message goes through, and the field readers.

A payload is a UTF-8 JSON object whose schema version ``"v"`` is the integer 1
(docs/protocol.md, "Payloads"). Each receiver used to check this its own way:
one took ``v: 1.0``, another ``v: true``, only some refused NaN, none capped
the size. Here the rules are written once: at most ``max_bytes`` bytes, strict
UTF-8, JSON without NaN or Infinity and without numbers that overflow to
infinity, an object at the top, an integer ``v`` equal to 1. What a message
kind requires beyond that is read with the field readers below, which raise
the caller's error type so each receiver keeps its own (specific) refusal.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

V = 1
MAX_MESSAGE = 1024 * 1024  # the default cap: the largest kind (a data envelope) fits


class ProtocolError(ValueError):
    """A message the protocol says to drop; the text says why."""


# The error a reader raises: a receiver passes its own subclass to keep its refusals apart.
Refusal = type[ProtocolError]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def decode(raw: bytes, *, max_bytes: int = MAX_MESSAGE, error: Refusal = ProtocolError) -> Any:
    """``raw`` as strict JSON (any type), or ``error`` saying what is wrong."""
    if len(raw) > max_bytes:
        raise error(f"message of {len(raw)} bytes is larger than {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error("not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise error(f"not JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise error(f"not JSON: {exc}"[:200]) from None


def check_version(doc: dict[str, Any], *, error: Refusal = ProtocolError) -> None:
    v = doc.get("v")
    if type(v) is not int or v != V:
        raise error(f"unsupported schema version v={v!r}"[:200])


def parse(
    raw: bytes, *, max_bytes: int = MAX_MESSAGE, error: Refusal = ProtocolError
) -> dict[str, Any]:
    """A protocol message: a JSON object with ``"v": 1``, or ``error`` saying what is wrong."""
    doc = decode(raw, max_bytes=max_bytes, error=error)
    if not isinstance(doc, dict):
        raise error(f"not a JSON object but {type(doc).__name__}")
    check_version(doc, error=error)
    return doc


def dumps(doc: dict[str, Any]) -> bytes:
    """Compact JSON, refusing what `parse` would refuse (NaN, Infinity)."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


# -- field readers -----------------------------------------------------------------


def number(doc: dict[str, Any], field: str, *, error: Refusal = ProtocolError) -> float:
    """A required finite number (an integer or a float, never a boolean)."""
    value = doc.get(field)
    if value is None:
        raise error(f"missing field {field!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise error(f"field {field!r} is not a finite number: {value!r}"[:200])
    return float(value)


def integer(
    doc: dict[str, Any], field: str, low: int, high: int, *, error: Refusal = ProtocolError
) -> int:
    """A required integer in ``low..high`` (``1.0`` and ``true`` are not integers)."""
    value = doc.get(field)
    if type(value) is not int or not low <= value <= high:
        raise error(f"field {field!r} is not an integer in {low}..{high}: {value!r}"[:200])
    return value


def text(
    doc: dict[str, Any],
    field: str,
    *,
    pattern: re.Pattern[str] | None = None,
    max_len: int | None = None,
    error: Refusal = ProtocolError,
) -> str:
    """A required non-empty string, matching ``pattern`` whole when one is given."""
    value = doc.get(field)
    if not isinstance(value, str) or not value:
        raise error(f"field {field!r} is not a non-empty string: {value!r}"[:200])
    if max_len is not None and len(value) > max_len:
        raise error(f"field {field!r} is longer than {max_len} characters")
    refuse_nul(field, value, error)
    if pattern is not None and not pattern.fullmatch(value):
        raise error(f"field {field!r} is not valid: {value!r}"[:200])
    return value


def optional_text(
    doc: dict[str, Any], field: str, *, max_len: int, error: Refusal = ProtocolError
) -> str | None:
    """An optional string (absent or null is None) of at most ``max_len`` characters."""
    value = doc.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise error(f"field {field!r} is not a string: {value!r}"[:200])
    if len(value) > max_len:
        raise error(f"field {field!r} is longer than {max_len} characters")
    return without_nul(value)


def refuse_nul(field: str, value: str, error: Refusal = ProtocolError) -> None:
    """A NUL character in an identifier or an address is refused (PostgreSQL's text
    cannot store one, and none has a reason to hold one)."""
    if "\x00" in value:
        raise error(f"field {field!r} holds a NUL character")


def without_nul(value: str) -> str:
    """Free text (a reason, an error) with each NUL character made U+FFFD: the report is
    kept (an error message may quote a value that held one), and PostgreSQL's text
    cannot store a NUL."""
    return value.replace("\x00", "\ufffd")
