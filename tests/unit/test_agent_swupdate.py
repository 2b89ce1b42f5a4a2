"""Handing a file to SWUpdate's client (agent update/swupdate.py), against small stand-in clients.

Each stand-in is a real program speaking the client's side of the contract
(arguments, stdin, messages, exit status); what SWUpdate itself checks is
proved in the boot tier.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from twelvefactor_agent.update.swupdate import InstallError, install

SIZE = 1 << 20  # far more than a pipe holds, so a client that stops reading blocks the feed

OK = """
data = sys.stdin.buffer.read()
print("args", " ".join(sys.argv[1:]), len(data), flush=True)
print("[INFO ] : SWUPDATE successful !", flush=True)
"""
REFUSES = """
sys.stdin.buffer.read(4096)
print("[TRACE] : reading sw-description", flush=True)
print("[ERROR] : sw-description.sig cannot be found", flush=True)
print("Status: FAILURE", flush=True)
sys.exit(1)
"""
STOPS_READING = """
sys.stdin.buffer.read(4096)
print("[TRACE] : waiting", flush=True)
time.sleep(60)
"""
NEVER_EXITS = """
sys.stdin.buffer.read()
print("[TRACE] : all read", flush=True)
time.sleep(60)
"""
SILENT_SUCCESS = """
sys.stdin.buffer.read()
"""


def _client(tmp_path: Path, body: str) -> str:
    path = tmp_path / "swupdate-client"
    path.write_text(f"#!{sys.executable}\nimport sys, time\n{body}")
    path.chmod(0o755)
    return str(path)


@pytest.fixture()
def swu(tmp_path: Path) -> Path:
    path = tmp_path / "update.swu"
    path.write_bytes(bytes(range(256)) * (SIZE // 256))
    return path


def test_the_whole_file_goes_to_the_client_with_progress(tmp_path: Path, swu: Path) -> None:
    seen: list[tuple[int, int]] = []
    install(
        swu, dry_run=True, client=_client(tmp_path, OK), progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (SIZE, SIZE)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_dry_run_and_install_pass_their_arguments(tmp_path: Path, swu: Path) -> None:
    client = tmp_path / "log"
    body = OK + f"open({str(client)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
    install(swu, dry_run=True, client=_client(tmp_path, body))
    install(swu, dry_run=False, client=_client(tmp_path, body))
    assert client.read_text().splitlines() == ["-v -d -", "-v -"]


def test_a_refusal_gives_swupdates_own_error_lines(tmp_path: Path, swu: Path) -> None:
    with pytest.raises(InstallError) as err:
        install(swu, dry_run=True, client=_client(tmp_path, REFUSES))
    text = str(err.value)
    assert text.startswith("SWUpdate refused the file (after ")
    assert "exit 1" in text and "sw-description.sig cannot be found" in text
    assert "reading sw-description" not in text  # the error lines, not the chatter


def test_exit_zero_without_success_is_not_success(tmp_path: Path, swu: Path) -> None:
    with pytest.raises(InstallError, match=r"after the whole file, exit 0\): no output"):
        install(swu, dry_run=False, client=_client(tmp_path, SILENT_SUCCESS))


def _counted(tmp_path: Path, body: str) -> tuple[str, Path]:
    """A client that appends a line to a file each time it runs."""
    runs = tmp_path / "runs"
    return _client(tmp_path, f"open({str(runs)!r}, 'a').write('run\\n')\n" + body), runs


def test_a_client_that_stops_reading_is_killed_and_run_once_more(tmp_path: Path, swu: Path) -> None:
    client, runs = _counted(tmp_path, STOPS_READING)
    started = time.monotonic()
    with pytest.raises(InstallError) as err:
        install(swu, dry_run=True, client=client, stall_timeout=1.5)
    assert time.monotonic() - started < 30  # not the client's 60 s sleep
    assert runs.read_text().count("run") == 2
    text = str(err.value)
    assert text.startswith("SWUpdate took no data for 2 s (after ")
    assert "killed: [TRACE] : waiting" in text


def test_a_client_that_never_exits_is_killed(tmp_path: Path, swu: Path) -> None:
    client, runs = _counted(tmp_path, NEVER_EXITS)
    started = time.monotonic()
    with pytest.raises(InstallError) as err:
        install(swu, dry_run=False, client=client, finish_timeout=1.5)
    assert time.monotonic() - started < 30
    assert runs.read_text().count("run") == 2
    assert str(err.value).startswith("SWUpdate did not finish within 2 s (after the whole file)")


def test_a_client_stuck_once_succeeds_the_second_time(tmp_path: Path, swu: Path) -> None:
    """swupdate-client's lost wake-up is a race: the second run gets through."""
    first = tmp_path / "first-run-done"
    body = f"""
import os
if not os.path.exists({str(first)!r}):
    open({str(first)!r}, "w").close()
    sys.stdin.buffer.read(256)
    time.sleep(60)
{OK}"""
    seen: list[tuple[int, int]] = []
    install(
        swu,
        dry_run=True,
        client=_client(tmp_path, body),
        stall_timeout=1.5,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert first.exists() and seen[-1] == (SIZE, SIZE)


def test_a_missing_client_is_named(tmp_path: Path, swu: Path) -> None:
    with pytest.raises(InstallError, match=r"cannot run .*/nowhere/swupdate-client"):
        install(swu, dry_run=True, client=str(tmp_path / "nowhere" / "swupdate-client"))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"cannot read .*gone\.swu: No such file"):
        install(tmp_path / "gone.swu", dry_run=True, client=_client(tmp_path, OK))
