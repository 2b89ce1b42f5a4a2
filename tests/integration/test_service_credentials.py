"""Each process of the cloud side holds only its own key (issue 19, finding 16a).

Seen from the running processes, as an attacker who took one over would see
them: what its command line and its configuration name, and which files it
has open. None may name the PKI folder, a CA key or another process's key;
each one's credentials folder holds exactly its own files, keys 0600.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from twelvefactor_services.management.cli import main as management_cli
from twelvefactor_services.process import ChildProcess
from twelvefactor_services.solution.cli import main as solution_cli

from testbed.stack import ServiceProcess, Stack

pytestmark = pytest.mark.integration

# file name in the process's credentials folder -> mode
EXPECTED = {
    "broker": {
        "broker.crt": 0o644,
        "broker.key": 0o600,
        "ca.crt": 0o644,
        "service-ca.crt": 0o644,
        "crl.pem": 0o644,
    },
    "management": {
        "management.crt": 0o644,
        "management.key": 0o600,
        "artifacts.crt": 0o644,
        "artifacts.key": 0o600,
        "api.crt": 0o644,
        "api.key": 0o600,
        "ca.crt": 0o644,
    },
    "solution": {
        "solution.crt": 0o644,
        "solution.key": 0o600,
        "ca.crt": 0o644,
    },
}
# each process's own private keys, in the PKI
OWN_KEYS = {
    "broker": ["servers/broker.key"],
    "management": [
        "services/management.key",
        "servers/artifacts.key",
        "servers/management-api.key",
    ],
    "solution": ["services/solution.key"],
}


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _open_files(pid: int) -> list[str]:
    fds = Path(f"/proc/{pid}/fd")
    found = []
    for fd in fds.iterdir():
        try:
            found.append(os.readlink(fd))
        except FileNotFoundError:
            continue  # closed meanwhile
    return found


def _broker_config_paths(conf: Path) -> list[str]:
    """Every file the broker's configuration names (the broker's command line names only it)."""
    named = []
    for line in conf.read_text().splitlines():
        words = line.split()
        if len(words) == 2 and (
            words[0] in ("cafile", "certfile", "keyfile", "acl_file", "plugin")
            or words[0].startswith("plugin_opt_")
        ):
            named.append(words[1])
    return named


def _tls_folder(stack: Stack, process: str) -> Path:
    return stack.root / process / "tls"


def _keys_not_owned(stack: Stack, process: str) -> dict[Path, bytes]:
    """Every private key in the PKI that is not ``process``'s own: CA keys, the others'."""
    own = {stack.pki.root / rel for rel in OWN_KEYS[process]}
    return {k: k.read_bytes() for k in stack.pki.root.rglob("*.key") if k not in own}


def _assert_names_nothing_forbidden(
    what: str, names: list[str], stack: Stack, process: str
) -> None:
    """No name is in the PKI folder, and no named file is a key that is not the process's own."""
    pki = stack.pki.root
    forbidden = _keys_not_owned(stack, process)
    tls = _tls_folder(stack, process).resolve()
    for name in names:
        assert str(pki) not in name and str(pki.resolve()) not in name, f"{what}: {name}"
        path = Path(name)
        if not (path.is_absolute() and path.is_file()):
            continue  # an option, a socket, a pipe
        if path.suffix == ".key":
            assert path.resolve().parent == tls, f"{what}: {name} is not in {tls}"
        data = path.read_bytes()
        for key, secret in forbidden.items():
            assert data != secret, f"{what}: {name} is a copy of {key}"


def test_each_process_holds_only_its_own_key_and_never_the_pki(
    stack: Stack, services: tuple[ServiceProcess, ServiceProcess]
) -> None:
    management, solution = services
    stack.device("dev-a")  # a device key in the PKI, which no process may hold either
    processes: dict[str, ChildProcess] = {
        "broker": stack.broker,
        "management": management,
        "solution": solution,
    }
    for process, proc in processes.items():
        pid = proc.pid
        assert pid is not None and proc.running, process
        cmdline = _cmdline(pid)
        if process == "broker":  # mosquitto -c CONF: what the configuration names counts too
            cmdline += _broker_config_paths(Path(cmdline[cmdline.index("-c") + 1]))
        _assert_names_nothing_forbidden(f"{process}'s command line", cmdline, stack, process)
        # what it is given instead: its own files, in its own folder
        tls = _tls_folder(stack, process).resolve()
        for name in EXPECTED[process]:
            assert any(Path(arg).resolve() == tls / name for arg in cmdline), (process, name)
        open_files = _open_files(pid)
        assert str(proc.log_file.resolve()) in open_files, (process, open_files)  # it can see
        _assert_names_nothing_forbidden(f"{process}'s open files", open_files, stack, process)

    # Each credentials folder: exactly the expected files, with the expected modes, copies
    # of the PKI's; nothing anywhere in the process's folder is a key that is not its own.
    pki = stack.pki.root
    sources = {
        "broker.crt": "servers/broker.crt",
        "broker.key": "servers/broker.key",
        "management.crt": "services/management.crt",
        "management.key": "services/management.key",
        "solution.crt": "services/solution.crt",
        "solution.key": "services/solution.key",
        "artifacts.crt": "servers/artifacts.crt",
        "artifacts.key": "servers/artifacts.key",
        "api.crt": "servers/management-api.crt",
        "api.key": "servers/management-api.key",
        "ca.crt": "ca.crt",
        "service-ca.crt": "service-ca.crt",
        "crl.pem": "crl.pem",
    }
    for process, files in EXPECTED.items():
        tls = _tls_folder(stack, process)
        assert stat.S_IMODE(tls.stat().st_mode) == 0o700, tls
        assert sorted(p.name for p in tls.iterdir()) == sorted(files), process
        for name, mode in files.items():
            path = tls / name
            assert stat.S_IMODE(path.stat().st_mode) == mode, path
            assert path.read_bytes() == (pki / sources[name]).read_bytes(), path
        everything = [str(p) for p in (stack.root / process).rglob("*") if p.is_file()]
        _assert_names_nothing_forbidden(f"{process}'s folder", everything, stack, process)


def test_a_missing_credential_names_the_file_and_the_command_that_makes_it(
    tmp_path: Path,
) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in (
        "solution.crt",
        "management.crt",
        "management.key",
        "ca.crt",
        "api.crt",
        "api.key",
    ):
        (tls / name).write_text("not read before every file is there\n")

    def identity(service: str) -> list[str]:
        cert, key = tls / f"{service}.crt", tls / f"{service}.key"
        return ["--cert", str(cert), "--key", str(key), "--ca", str(tls / "ca.crt")]

    with pytest.raises(SystemExit) as exited:
        solution_cli(
            [
                "serve",
                *identity("solution"),
                "--broker-port",
                "1",
                "--db",
                str(tmp_path / "s.db"),
                "--archive-dir",
                str(tmp_path / "archive"),
            ]
        )
    message = str(exited.value)
    assert f"--key {tls / 'solution.key'}" in message, message
    assert "twelvefactor-pki export PKI solution" in message, message

    serve = ["serve", *identity("management"), "--broker-port", "1", "--db", str(tmp_path / "r.db")]
    serve += ["--api-cert", str(tls / "api.crt"), "--api-key", str(tls / "api.key")]
    with pytest.raises(SystemExit) as exited:
        management_cli([*serve, "--artifact-port", "1"])
    message = str(exited.value)
    assert "--artifact-port needs --artifact-cert, --artifact-key and --device-ca" in message
    artifact = ["--artifact-cert", str(tls / "artifacts.crt"), "--artifact-key", str(tls / "a.key")]
    with pytest.raises(SystemExit) as exited:
        management_cli(
            [*serve, "--artifact-port", "1", *artifact, "--device-ca", str(tls / "ca.crt")]
        )
    message = str(exited.value)
    assert f"--artifact-cert {tls / 'artifacts.crt'}" in message, message
    assert "twelvefactor-pki export PKI management" in message, message
