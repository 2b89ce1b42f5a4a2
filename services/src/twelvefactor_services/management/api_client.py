"""A client of the operator API (HTTPS, bearer token), for the CLI, scripts and tests.

Where the API is and who is asking comes from, in this order: the arguments,
the environment (TWELVEFACTOR_API_URL, TWELVEFACTOR_API_TOKEN,
TWELVEFACTOR_API_CA), the file `login` writes (mode 0600) in
``$XDG_CONFIG_HOME/twelvefactor/management.json``.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO


class ApiError(Exception):
    """The API answered with an error (``status`` >= 400), or could not be reached (0)."""

    def __init__(self, status: int, error: str, problems: list[str]) -> None:
        super().__init__("; ".join(problems) or error)
        self.status = status
        self.error = error
        self.problems = problems


def credentials_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "twelvefactor" / "management.json"


@dataclass(frozen=True)
class Credentials:
    url: str
    token: str | None
    ca: Path | None  # None: the system's trust store

    def save(self, path: Path | None = None) -> Path:
        path = path or credentials_file()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {
            "url": self.url,
            "token": self.token,
            "ca": None if self.ca is None else str(self.ca),
        }
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # 0600 from the start
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
        tmp.replace(path)
        return path

    @classmethod
    def find(
        cls,
        url: str | None = None,
        token: str | None = None,
        ca: Path | None = None,
        env: Mapping[str, str] = os.environ,
        path: Path | None = None,
    ) -> Credentials:
        saved: dict[str, Any] = {}
        path = path or credentials_file()
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except ValueError as exc:
                raise ApiError(0, "bad_credentials", [f"{path}: not JSON ({exc})"]) from None
        url = url or env.get("TWELVEFACTOR_API_URL") or saved.get("url")
        if not url:
            raise ApiError(
                0,
                "no_url",
                ["no API address: give --url, set TWELVEFACTOR_API_URL or run 'login' first"],
            )
        token = token or env.get("TWELVEFACTOR_API_TOKEN") or saved.get("token")
        ca_text = str(ca) if ca else env.get("TWELVEFACTOR_API_CA") or saved.get("ca")
        return cls(url, token, Path(ca_text) if ca_text else None)


class ManagementClient:
    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ca: Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ApiError(0, "bad_url", [f"{url!r}: the API is https://HOST[:PORT]"])
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 443
        self.base = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=None if ca is None else str(ca))

    @classmethod
    def of(cls, creds: Credentials, timeout: float = 60.0) -> ManagementClient:
        return cls(creds.url, token=creds.token, ca=creds.ca, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str | list[str]] | None = None,
        upload: BinaryIO | None = None,
        size: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One exchange: (status, decoded JSON answer). ApiError(0) if unreachable."""
        target = self.base + path
        if query:
            target += "?" + urllib.parse.urlencode(query, doseq=True)
        sent: dict[str, str] = {"Accept": "application/json"}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        data: bytes | BinaryIO | None = None
        if upload is not None:
            sent["Content-Type"] = "application/octet-stream"
            sent["Content-Length"] = str(size)
            data = upload
        elif body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
            sent["Content-Length"] = str(len(data))
        sent.update(headers or {})
        conn = self._connection()
        try:
            conn.request(method, target, body=data, headers=sent)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(0, "unreachable", [f"{self.url}: {exc}"]) from None
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, {
                "error": "not_json",
                "problems": [raw[:200].decode(errors="replace")],
            }

    def _connection(self) -> http.client.HTTPSConnection:
        """A new connection (a subclass may open it elsewhere, e.g. in a network namespace)."""
        return http.client.HTTPSConnection(
            self.host, self.port, timeout=self.timeout, context=self.context
        )

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """The answer of a successful exchange; ApiError with the API's problems otherwise."""
        status, answer = self.request(method, path, body, **kwargs)
        if status >= 400:
            error = answer.get("error", "error") if isinstance(answer, dict) else "error"
            problems = answer.get("problems") if isinstance(answer, dict) else None
            if not isinstance(problems, list):
                message = answer.get("message") if isinstance(answer, dict) else None
                problems = [str(message or answer)]
            raise ApiError(status, str(error), [str(p) for p in problems])
        return answer

    def get(self, path: str, **query: str) -> Any:
        return self.call("GET", path, query=query or None)

    def upload(self, path: str, file: Path, query: Mapping[str, str | list[str]]) -> Any:
        with file.open("rb") as f:
            return self.call("POST", path, query=query, upload=f, size=file.stat().st_size)
