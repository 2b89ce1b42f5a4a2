"""A QEMU machine (x86-64 with OVMF, or arm64's virt with U-Boot) booting the
disk image, driven over its serial console.

QEMU runs with -no-reboot: a reboot or a power cut ends the process, and the
test starts it again, which is what a power cycle looks like (an OVMF warm
reboot is slower than a fresh start under TCG anyway). The console is read
with pexpect; after login the shell is set to no echo and a wide terminal, so
long commands do not wrap and break the matching, and the kernel's console
messages are silenced so they do not interleave with command output.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pexpect

from testbed.boot.board import OVMF_VARS, X86_64, Board
from testbed.boot.pace import PACE
from testbed.proc import read_log

PROMPT = "TFBOOT-PROMPT# "
# Reference times (pace.py scales them by this run's boots): power-on to the
# login prompt, and a command on the console (most take well under a second).
LOGIN_SECONDS = 45.0
COMMAND_SECONDS = 40.0
COMMAND_TIMEOUT = 120.0  # pexpect's default read limit; every wait here names its own
# The kernel prints its command line early ("Command line:" on x86-64, "Kernel
# command line:" everywhere); the layer's boot scripts put the slot on it.
KERNEL_SLOT = r"[Cc]ommand line:[^\n]*twelvefactor\.slot=([AB])"


def accel_option(accel: str) -> str:
    """QEMU's -accel value for an accelerator name.

    TCG runs single-threaded: with one host thread per vCPU (MTTCG), a vCPU
    can still run its translation of kernel text that another vCPU has just
    patched (static keys), and the guest dies with "Oops: int3" early in boot.
    Seen once in CI; rare, but a flake in every boot test.
    """
    return "tcg,thread=single" if accel == "tcg" else accel


class VMError(AssertionError):
    """The machine did not do what the test waited for; the message has the console tail."""


@dataclass(frozen=True)
class Result:
    status: int
    output: str

    def check(self, command: str) -> str:
        if self.status != 0:
            raise VMError(f"`{command}` exited {self.status}:\n{self.output}")
        return self.output


class VM:
    """One disk image, booted as often as a test needs (each boot a fresh QEMU)."""

    def __init__(
        self,
        disk: Path,
        workdir: Path,
        *,
        netns: str | None = None,
        nic: str = "user,id=net0,model=virtio-net-pci",
        accel: str = "tcg",
        memory_mib: int = 1024,
        board: Board = X86_64,
    ) -> None:
        self.disk = disk
        self.board = board
        self.workdir = workdir
        self.netns = netns
        self.nic = nic  # QEMU -nic: its netdev is net0
        self.accel = accel
        self.memory_mib = memory_mib
        workdir.mkdir(parents=True, exist_ok=True)
        self.vars = workdir / "OVMF_VARS.fd"
        if not board.uboot:
            shutil.copyfile(OVMF_VARS, self.vars)
        self.console_log = workdir / "console.log"
        self.boots = 0
        # read-only raw disks attached from the next power-on (e.g. an update file)
        self.extra_drives: list[Path] = []
        # a pcap file of the guest's underlay, from the next power-on
        self.capture: Path | None = None
        # the real-time clock's start (QEMU -rtc base=), from the next power-on
        self.rtc_base: str | None = None
        self.powered_on_at = 0.0
        self._child: pexpect.spawn | None = None
        self._log: TextIO | None = None

    # -- power ----------------------------------------------------------------

    def argv(self) -> list[str]:
        qemu = [
            self.board.qemu,
            *self._machine(),
            "-accel",
            accel_option(self.accel),
            "-m",
            str(self.memory_mib),
            "-smp",
            "2",
            "-display",
            "none",
            "-nodefaults",
            "-serial",
            "stdio",
            "-no-reboot",
            *self._disk(),
            "-nic",
            self.nic,
            "-object",
            "rng-random,filename=/dev/urandom,id=rng0",
            "-device",
            "virtio-rng-pci,rng=rng0",
        ]
        if self.rtc_base is not None:
            qemu += ["-rtc", f"base={self.rtc_base}"]
        if self.capture is not None:
            # every frame of the guest's NIC, both ways, as QEMU passes it on
            qemu += ["-object", f"filter-dump,id=dump0,netdev=net0,file={self.capture}"]
        for n, extra in enumerate(self.extra_drives):
            qemu += ["-drive", f"if=none,id=extra{n},format=raw,readonly=on,file={extra}"]
            qemu += ["-device", f"virtio-blk-pci,drive=extra{n}"]
        if self.netns is not None:
            return ["ip", "netns", "exec", self.netns, *qemu]
        return qemu

    def _machine(self) -> list[str]:
        if self.board.uboot:
            # cortex-a57: what Yocto's qemuarm64 runs; cheaper under TCG than "max"
            return ["-machine", "virt", "-cpu", "cortex-a57", "-bios", str(self.board.firmware)]
        return [
            "-machine", "q35",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={self.board.firmware}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
        ]  # fmt: skip

    def _disk(self) -> list[str]:
        drive = f"if=none,id=disk0,format=raw,file={self.disk},cache=unsafe"
        # U-Boot reads its environment from the disk before it enumerates PCI
        # (board_r.c: initr_env, then pci_init), so on virt the disk is virtio-mmio
        device = "virtio-blk-device" if self.board.uboot else "virtio-blk-pci"
        return ["-drive", drive, "-device", f"{device},drive=disk0"]

    def power_on(self) -> None:
        if self.running:
            raise VMError("power_on: the machine is already running")
        self.boots += 1
        self._log = self.console_log.open("a", encoding="utf-8", errors="replace")
        self._log.write(f"\n===== boot {self.boots}: {' '.join(self.argv())}\n")
        self.powered_on_at = time.monotonic()
        argv = self.argv()
        self._child = pexpect.spawn(
            argv[0],
            argv[1:],
            encoding="utf-8",
            codec_errors="replace",
            timeout=COMMAND_TIMEOUT,
            maxread=65536,
            searchwindowsize=None,
            dimensions=(50, 500),
        )
        self._child.logfile_read = self._log

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.isalive()

    def power_cut(self) -> None:
        """Pull the plug: QEMU is killed, nothing is flushed or shut down."""
        child, self._child = self._child, None
        if child is not None:
            child.terminate(force=True)
            child.close()
        self._close_log()

    def wait_power_off(self, timeout: float | None = None) -> None:
        """Wait for QEMU to exit (a reboot or power-off under -no-reboot)."""
        child = self._require()
        child.expect(pexpect.EOF, timeout=PACE.limit(LOGIN_SECONDS) if timeout is None else timeout)
        child.close()
        self._child = None
        self._close_log()

    def drain(self) -> bool:
        """Read what the console printed since (a full pty stalls the guest's
        console, and with it the guest); False once QEMU has exited."""
        child = self._require()
        try:
            child.expect(pexpect.EOF, timeout=0.2)
        except pexpect.TIMEOUT:
            return True
        child.close()
        self._child = None
        self._close_log()
        return False

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _require(self) -> pexpect.spawn:
        if self._child is None:
            raise VMError("the machine is not running")
        return self._child

    # -- console ----------------------------------------------------------------

    def tail(self, chars: int = 4000) -> str:
        if self._log is not None:
            self._log.flush()
        return read_log(self.console_log)[-chars:]

    def expect(self, patterns: str | Sequence[str], timeout: float) -> int:
        """Wait for one of the regular expressions on the console; its index."""
        child = self._require()
        pats = [patterns] if isinstance(patterns, str) else list(patterns)
        try:
            index: int = child.expect(pats, timeout=timeout)
        except pexpect.TIMEOUT:
            raise VMError(
                f"console: none of {pats} within {timeout:.0f} s; console tail:\n{self.tail()}"
            ) from None
        except pexpect.EOF:
            raise VMError(f"console: QEMU exited waiting for {pats}:\n{self.tail()}") from None
        return index

    def last_match(self, group: int = 0) -> str:
        """A group of what the last expect() matched."""
        match = self._require().match
        if not isinstance(match, re.Match):
            raise VMError("no regular-expression match to read")
        return str(match.group(group))

    def login(self, timeout: float | None = None) -> float:
        """Log in as root on the serial console; seconds since power-on."""
        child = self._require()
        if timeout is None:
            timeout = PACE.limit(LOGIN_SECONDS) - (time.monotonic() - self.powered_on_at)
        self.expect(r"login: ", max(timeout, PACE.limit(COMMAND_SECONDS)))
        child.sendline("root")
        if self.expect([r"Password: ", r"# "], PACE.limit(COMMAND_SECONDS)) == 0:
            child.sendline("")
            self.expect(r"# ", PACE.limit(COMMAND_SECONDS))
        since = time.monotonic() - self.powered_on_at
        # No echo and a wide terminal (long commands would wrap), a prompt of our
        # own, no bracketed-paste codes, and neither kernel messages nor systemd's
        # status lines (SIGRTMIN+21) in the middle of command output.
        child.sendline(
            f"stty -echo cols 1000; export PS1='{PROMPT}' PS2='' TERM=dumb SYSTEMD_COLORS=0;"
            " bind 'set enable-bracketed-paste off'; dmesg -n 1; kill -s RTMIN+21 1"
        )
        self.expect(re.escape(PROMPT), PACE.limit(COMMAND_SECONDS))
        return since

    def run(self, command: str, timeout: float | None = None) -> Result:
        """Run a shell command as root; its exit status and output (stdout+stderr)."""
        child = self._require()
        if timeout is None:
            timeout = PACE.limit(COMMAND_SECONDS)
        tag = secrets.token_hex(4)
        # The markers are split in the command text, so only the output matches.
        child.sendline(f"echo TF-BEG''{tag}; {{ {command.strip()} ; }} 2>&1; echo TF-END''{tag}=$?")
        self.expect(f"TF-BEG{tag}\r*\n", timeout)
        self.expect(f"TF-END{tag}=(\\d+)", timeout)
        output = (child.before or "").replace("\r", "")
        status = int(child.match.group(1))
        self.expect(re.escape(PROMPT), PACE.limit(COMMAND_SECONDS))
        return Result(status, output.rstrip("\n"))

    def check(self, command: str, timeout: float | None = None) -> str:
        """Output of a command that must succeed."""
        return self.run(command, timeout).check(command)

    def put(self, path: str, data: bytes, chunk: int = 768) -> None:
        """Write a file on the guest through the console (base64 in short lines:
        the tty's canonical mode keeps at most 4095 characters of a line)."""
        text = base64.b64encode(data).decode()
        staging = f"{path}.b64"
        self.check(f": > {staging}")
        for i in range(0, len(text), chunk):
            self.check(f"printf %s '{text[i : i + chunk]}' >> {staging}")
        self.check(f"base64 -d {staging} > {path} && rm {staging}")
        digest = hashlib.sha256(data).hexdigest()
        if self.check(f"sha256sum {path}").split()[0] != digest:
            raise VMError(f"put {path}: the copy on the guest differs")

    def wait_for(self, command: str, expected: str, timeout: float) -> str:
        """Poll a command until its output (stripped) equals `expected`; the last output."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.run(command).output.strip()
            if out == expected:
                return out
            time.sleep(3)
        raise VMError(f"`{command}` gave {out!r}, not {expected!r}, for {timeout:.0f} s")
