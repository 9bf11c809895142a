"""Run a firmware build: boot it on a pseudo-terminal (QEMU or the host executable), or probe a model.

- ``start_board(fw, state)``: the board serves firmware_bridge/PROTOCOL.md on ``RunningBoard.port``;
  its slots live in the file ``state`` (created when missing), so a restart keeps its models.
  QEMU: ``qemu-system-arm -M mps2-an386 -display none -monitor none -serial pty -semihosting-config
  enable=on,target=native,arg=firmware,arg=STATE[,arg=--trusted-key,arg=HEX] -kernel firmware.elf``,
  the port read from QEMU's ``char device redirected to /dev/pts/N`` line (no spaces in STATE: the
  guest splits its command line at spaces). Host:
  ``firmware --state STATE [--trusted-key HEX]``, whose first stdout line is the port.
- ``run_probe(fw, model)``: the arena the model needs, measured by the firmware on its own core with
  its own kernels (``--probe MODEL [--arena-capacity N]``; one JSON line).

The child processes die with the process that started them (PR_SET_PDEATHSIG), so a killed
``device-sim --board`` takes its emulator, and its pseudo-terminal, with it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lepton_edge.errors import CheckFailed, LeptonError
from lepton_edge.firmware_build.boards import get_board
from lepton_edge.firmware_build.build import FirmwareBuild, check_qemu

_QEMU_PORT = re.compile(r"char device redirected to (/dev/\S+)")
_HOST_PORT = re.compile(r"^(/dev/\S+)\s*$", re.M)
PR_SET_PDEATHSIG = 1


class BoardFailed(LeptonError):
    """The board did not start, or stopped on its own (exit 1); the message has its last words."""

    exit_code = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass
    os.setpgrp()  # a Ctrl-C on the terminal goes to us; we stop the board ourselves


def last_words(text: str) -> str:
    """The most telling line of a board's log: QEMU's fatal error, a sanitizer report, the firmware's own
    complaint, else the last line."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    for pattern in (r"qemu: fatal|qemu-system-arm:", r"ERROR: \w+Sanitizer|runtime error:", r"^firmware:",
                    r"\b(error|fatal|abort)\b"):
        hits = [x for x in lines if re.search(pattern, x, re.I)]
        if hits:
            return hits[0][:300]
    return lines[-1][:300] if lines else "no output"


def _qemu_escape(value: str) -> str:
    """A value inside a QEMU option list: commas are doubled."""
    return value.replace(",", ",,")


def key_hex(key) -> str:
    """A trusted key as the firmware takes it: 64 hex digits (raw Ed25519 public key)."""
    if isinstance(key, str):
        if re.fullmatch(r"[0-9a-fA-F]{64}", key):
            return key.lower()
        raise ValueError(f"trusted key {key!r}: expected 64 hex digits")
    if isinstance(key, (bytes, bytearray)):
        if len(key) != 32:
            raise ValueError("a raw Ed25519 public key has 32 bytes")
        return bytes(key).hex()
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def board_command(fw: FirmwareBuild, firmware_args: Sequence[str], *, serial: bool = True) -> list[str]:
    """The command line that runs ``fw`` with ``firmware_args`` (QEMU gets them through semihosting)."""
    spec = get_board(fw.board)
    if spec.is_host:
        return [str(fw.executable), *firmware_args]
    if spec.machine is None:
        raise LeptonError(f"board {fw.board} does not run here (a real board: flash it; see "
                          f"firmware_bridge/firmware/boards/{fw.board}/README.md)")
    qemu = check_qemu()
    spaced = [a for a in firmware_args if any(c.isspace() for c in str(a))]
    if spaced:  # the guest splits its semihosting command line at spaces
        raise LeptonError(f"{spaced[0]}: a path with spaces cannot reach the {fw.board} firmware (QEMU semihosting "
                          "command line); use another path")
    semihosting = ",".join(["enable=on", "target=native", "arg=firmware",
                            *(f"arg={_qemu_escape(str(a))}" for a in firmware_args)])
    return [qemu, "-M", spec.machine, "-display", "none", "-monitor", "none",
            "-serial", "pty" if serial else "none", "-semihosting-config", semihosting,
            "-kernel", str(fw.executable)]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # LeakSanitizer needs ptrace, which containers often refuse; the firmware has no heap anyway.
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


@dataclass
class RunningBoard:
    """A firmware build running on a pseudo-terminal (``port``), its slots in the file ``state``."""

    fw: FirmwareBuild
    state: Path
    trusted_keys: tuple[str, ...] = ()
    log: Path | None = None
    proc: subprocess.Popen | None = None
    port: str = ""
    _log_fh: IO[bytes] | None = field(default=None, repr=False)

    @property
    def command(self) -> list[str]:
        # host: firmware --state FILE ...; QEMU: the semihosting command line "firmware FILE ...".
        args = ["--state", str(self.state)] if get_board(self.fw.board).is_host else [str(self.state)]
        for key in self.trusted_keys:
            args += ["--trusted-key", key]
        return board_command(self.fw, args)

    def start(self, timeout: float = 30.0) -> str:
        """Boot the board; return its port (a new one for QEMU after a stop)."""
        self.stop()
        self.state.parent.mkdir(parents=True, exist_ok=True)
        if self.log is None:
            self.log = self.state.with_name(self.state.name + ".log")
        self._log_fh = open(self.log, "ab")
        offset = self._log_fh.tell()
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._log_fh,
                                     stderr=subprocess.STDOUT, env=_child_env(), preexec_fn=_die_with_parent)
        pattern = _HOST_PORT if get_board(self.fw.board).is_host else _QEMU_PORT
        deadline = time.monotonic() + timeout
        while True:
            text = self._read_log(offset)
            m = pattern.search(text)
            if m:
                self.port = m.group(1)
                return self.port
            if self.proc.poll() is not None or time.monotonic() > deadline:
                code = self.proc.poll()
                self.stop()
                state = f"exited with {code}" if code is not None else f"printed no port within {timeout:.0f} s"
                raise BoardFailed(f"firmware {self.fw.board} {state}: {last_words(text)} (log: {self.log})")
            time.sleep(0.05)

    def _read_log(self, offset: int) -> str:
        assert self.log is not None
        with open(self.log, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None when still running after ``timeout``."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Pull the plug: SIGKILL, no goodbye (the slots keep what was flushed)."""
        if self.alive():
            self.proc.kill()  # type: ignore[union-attr]
            self.proc.wait(10)  # type: ignore[union-attr]
        self._close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.alive():
            self.proc.terminate()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.proc.kill()  # type: ignore[union-attr]
                self.proc.wait(10)  # type: ignore[union-attr]
        self._close()

    def restart(self, timeout: float = 30.0) -> str:
        self.stop()
        return self.start(timeout)

    def _close(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> RunningBoard:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_board(fw: FirmwareBuild, state: Path, trusted_keys=(), log: Path | None = None,
                timeout: float = 30.0) -> RunningBoard:
    """Boot ``fw`` with its slots in the file ``state``; the returned board's ``port`` is ready to open.
    ``trusted_keys``: Ed25519 public keys (objects, 32 raw bytes or 64 hex digits)."""
    board = RunningBoard(fw, Path(state).expanduser().resolve(), tuple(key_hex(k) for k in trusted_keys),
                         Path(log) if log else None)
    board.start(timeout)
    return board


@dataclass(frozen=True)
class ProbeResult:
    """The arena a model needs on the firmware's own core and kernels."""

    head: int          # non-persistent bytes (activations)
    tail: int          # persistent bytes (tensor structs, op data, quantization)
    used: int          # head + tail, as the interpreter reports arena_used_bytes()
    min_arena: int     # the smallest arena (multiple of 16) with which it allocates and invokes
    measured_on: str   # e.g. "cortex-m4 (qemu mps2-an386), cmsis-nn"
    seconds: float
    raw: dict


def run_probe(fw: FirmwareBuild, model: bytes, capacity: int | None = None, timeout: float = 900.0) -> ProbeResult:
    """Measure ``model``'s arena on the firmware's target (the host executable or QEMU, no serial line).
    A model the firmware cannot run is :class:`CheckFailed` with the firmware's reason."""
    spec = get_board(fw.board)
    with tempfile.TemporaryDirectory(prefix="lepton-probe-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model)
        args = ["--probe", str(path)]
        if capacity is not None:
            args += ["--arena-capacity", str(int(capacity))]
        cmd = board_command(fw, args, serial=False)
        start = time.monotonic()
        try:
            run = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                                 env=_child_env(), preexec_fn=_die_with_parent)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"the {fw.board} firmware's arena probe did not finish within {timeout:.0f} s") from None
        seconds = time.monotonic() - start
    out = run.stdout.decode(errors="replace") + "\n" + run.stderr.decode(errors="replace")
    answer = None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                candidate = json.loads(line)
            except ValueError:
                continue
            if isinstance(candidate, dict) and ("ok" in candidate or "head" in candidate):
                answer = candidate
    if answer is None:
        raise CheckFailed(f"the {fw.board} firmware's arena probe gave no answer (exit {run.returncode}): "
                          f"{last_words(out)}")
    if not answer.get("ok", True):
        reason = answer.get("error") or answer.get("reason") or "the model does not run"
        raise CheckFailed(f"on {fw.board} ({spec.measured_on()}): {reason}")
    try:
        head, tail = int(answer["head"]), int(answer["tail"])
        used = int(answer.get("used", head + tail))
        min_arena = int(answer["min_arena"])
    except (KeyError, TypeError, ValueError):
        raise CheckFailed(f"the {fw.board} firmware's arena probe answered {answer!r}") from None
    return ProbeResult(head, tail, used, min_arena, spec.measured_on(), seconds, answer)
