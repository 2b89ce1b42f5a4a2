"""Run a real twelvefactor-agent on this machine against a Stack.

The demo and the end-to-end tests use it before devices move into QEMU: the
agent is the same program the device runs, with a configuration that points
its two sessions at the stack's listeners and keeps its state in a folder.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from twelvefactor_agent.localapi.client import AgentClient
from twelvefactor_services.process import ChildProcess

from testbed.stack import Stack


def agent_config(
    stack: Stack,
    device_id: str,
    data_dir: Path,
    socket_path: Path,
    *,
    health_interval: int = 5,
    health_heartbeat: int | None = None,
    keepalive: int = 10,
    queue_max_bytes: int | None = None,
    backoff_cap: float = 2.0,
    confirm_window: int | None = None,
    link: dict[str, object] | None = None,
) -> str:
    """The TOML configuration of a host agent for ``device_id`` on ``stack``.

    Health goes every `health_interval` unless `health_heartbeat` is given: the
    tests watch health change, which the shipped settings only send on change."""
    identity = stack.device(device_id)
    lines = [
        "[device]",
        f'id = "{device_id}"',
        f'certificate = "{identity.cert}"',
        f'key = "{identity.key}"',
        f'ca = "{identity.ca}"',
        "[management]",
        f'host = "{stack.management_endpoint.host}"',
        f"port = {stack.management_endpoint.port}",
        "[solution]",
        f'host = "{stack.solution_endpoint.host}"',
        f"port = {stack.solution_endpoint.port}",
        "[agent]",
        f'data_dir = "{data_dir}"',
        f'socket = "{socket_path}"',
        f'state_file = "{data_dir / "state.json"}"',
        f"health_interval = {health_interval}",
        f"health_heartbeat = {health_heartbeat or health_interval}",
        f"keepalive = {keepalive}",
        *([] if confirm_window is None else [f"confirm_window = {confirm_window}"]),
        "[backoff]",
        "initial = 0.2",
        f"cap = {backoff_cap}",
    ]
    if queue_max_bytes is not None:
        lines += ["[queue]", f"max_bytes = {queue_max_bytes}"]
    if link:
        lines += ["[link]", *(f"{k} = {json.dumps(v)}" for k, v in link.items())]
    return "\n".join(lines) + "\n"


class HostAgent(ChildProcess):
    """One device agent process; its state survives stop/kill and start again."""

    def __init__(
        self,
        stack: Stack,
        device_id: str,
        root: Path,
        *,
        health_interval: int = 5,
        keepalive: int = 10,
        queue_max_bytes: int | None = None,
        confirm_window: int | None = None,
        link: dict[str, object] | None = None,
        python: str = sys.executable,
    ) -> None:
        super().__init__(f"agent {device_id}", root / "agent.log")
        self.device_id = device_id
        self.python = python  # the interpreter that runs the agent (a device-like one in bench)
        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # sun_path is 108 bytes: test folders are too deep, so sockets live in a short one.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="tf-agent-"))
        self.socket = self._sock_dir / "agent.sock"
        self.config_file = root / "agent.toml"
        self.config_file.write_text(
            agent_config(
                stack,
                device_id,
                self.data_dir,
                self.socket,
                health_interval=health_interval,
                keepalive=keepalive,
                queue_max_bytes=queue_max_bytes,
                confirm_window=confirm_window,
                link=link,
            )
        )

    def start(self, timeout: float = 60.0) -> None:
        """Start the agent and wait until its local API answers."""
        argv = [self.python, "-m", "twelvefactor_agent.cli", "run"]
        self._spawn([*argv, "--config", str(self.config_file)], self._answers, timeout)

    def _answers(self) -> bool:
        try:
            self.client().status()
            return True
        except OSError:
            return False

    def client(self) -> AgentClient:
        return AgentClient(str(self.socket))

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._sock_dir, ignore_errors=True)
