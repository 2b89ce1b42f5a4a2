"""The daemon's command line, read without argparse, and what is left to argparse."""

from __future__ import annotations

from pathlib import Path

import pytest
from twelvefactor_agent.cli import DEFAULT_CONFIG, _parser, run_command_line


@pytest.mark.parametrize(
    ("argv", "config", "level"),
    [
        ([], DEFAULT_CONFIG, "info"),
        (["run"], DEFAULT_CONFIG, "info"),
        (["run", "--config", "/data/config/agent.toml"], Path("/data/config/agent.toml"), "info"),
        (["--config", "/x.toml", "run"], Path("/x.toml"), "info"),
        (["--config=/x.toml"], Path("/x.toml"), "info"),
        (["run", "--log-level", "debug", "--config", "/x.toml"], Path("/x.toml"), "debug"),
        (["--log-level=error", "run", "--config=/x.toml"], Path("/x.toml"), "error"),
    ],
)
def test_run_lines_are_read_directly(argv: list[str], config: Path, level: str) -> None:
    assert run_command_line(argv) == (config, level)


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["publish", "temperature"],
        ["check-config", "--config", "/x.toml"],
        ["run", "--config"],  # value missing
        ["run", "--config", "--log-level", "info"],  # an option where the value goes
        ["run", "--config="],
        ["run", "--config", "/a.toml", "--config", "/b.toml"],
        ["run", "--log-level", "loud"],
        ["run", "--log-level", "info", "--log-level", "debug"],
        ["run", "run"],
        ["run", "--conf", "/x.toml"],  # argparse's abbreviations are argparse's business
        ["--help"],
        ["--version"],
        ["run", "extra"],
    ],
)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert run_command_line(argv) is None


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["run"],
        ["run", "--config", "/x.toml", "--log-level", "warning"],
        ["--config=/x.toml", "run", "--log-level=debug"],
    ],
)
def test_direct_reading_agrees_with_argparse(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    assert (args.command or "run") == "run"
    expected = (Path(getattr(args, "config", DEFAULT_CONFIG)), getattr(args, "log_level", "info"))
    assert run_command_line(argv) == expected
