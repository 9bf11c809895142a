"""The devices the tests run on besides a real board: the Python simulator (``lepton-edge device-sim``)
and the reference firmware (firmware_bridge/firmware) built for ``host`` (Linux, a pseudo-terminal,
ASan and UBSan) or emulated by QEMU (``qemu-m4``, ``qemu-m7``), each with its slots kept in a file.

All of them have the same face as :class:`hil_tests.support.Simulator`: ``start() -> port``,
``kill()`` (pull the plug), ``stop()``, ``port``, ``log``; ``start()`` after ``kill()`` boots the same
board again on the same slots.

Tests never build firmware: a board whose build is not cached (``make test`` builds them before pytest,
``lepton-edge firmware build --board BOARD`` by hand), or QEMU when it is missing, skips the test with the
reason, and fails it when ``LEPTON_REQUIRE_SHARED=1``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FIRMWARE_BOARDS = ("host", "qemu-m4", "qemu-m7")
#: The profile each firmware board plays (fw-spec.md): what its HELLO says.
BOARD_PROFILES = {"host": "stm32l4r5", "qemu-m4": "stm32l4r5", "qemu-m7": "stm32h743"}
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


def firmware_missing(board: str) -> str | None:
    """Why ``board``'s firmware cannot run here (None: it can)."""
    try:
        from lepton_edge.firmware_build import boards as fwboards
        from lepton_edge.firmware_build import build as fwbuild
    except ImportError as exc:
        return f"lepton_edge.firmware_build is not importable ({exc})"
    spec = fwboards.BOARDS.get(board)
    if spec is None:
        return f"no firmware board {board!r} (known: {', '.join(sorted(fwboards.BOARDS))})"
    if getattr(spec, "machine", None) and shutil.which("qemu-system-arm") is None:
        return "qemu-system-arm is not installed (make test installs it)"
    if fwbuild.cached_build(board) is None:
        return (f"no cached {board} firmware build (make test builds it before pytest; by hand: "
                f"lepton-edge firmware build --board {board})")
    return None


def require_firmware(board: str):
    """The cached :class:`FirmwareBuild` of ``board``, or skip (fail with LEPTON_REQUIRE_SHARED=1)."""
    why = firmware_missing(board)
    if why is not None:
        if os.environ.get("LEPTON_REQUIRE_SHARED") == "1":
            pytest.fail(f"{board}: {why} (LEPTON_REQUIRE_SHARED=1)")
        pytest.skip(f"{board}: {why}")
    from lepton_edge.firmware_build.build import cached_build

    return cached_build(board)


def raw_public_key(key) -> bytes:
    """A trusted key as the firmware takes it: the raw 32 bytes of an Ed25519 public key (a path to a
    ``signing.pub``, a ``cryptography`` public key, or bytes)."""
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    if isinstance(key, (str, os.PathLike)):
        from lepton_edge.artifact import load_public_key

        key = load_public_key(key)
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass
class FirmwareBoard:
    """The reference firmware for ``board`` on a pseudo-terminal; its slots live in ``state``."""

    board: str
    state: Path
    trusted_keys: tuple = ()  # anything raw_public_key takes
    port: str = ""
    running: object = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state = Path(self.state)
        self.state.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.state.parent / f"{self.state.name}.{self.board}.log"
        self.fw = require_firmware(self.board)

    @property
    def profile(self) -> str:
        return BOARD_PROFILES[self.board]

    def start(self, timeout: float = 30.0) -> str:
        from lepton_edge.firmware_build.launch import start_board

        self.stop()
        keys = tuple(raw_public_key(k) for k in self.trusted_keys)
        self.running = start_board(self.fw, self.state, trusted_keys=keys, log=self.log)
        self.port = self.running.port
        return self.port

    def kill(self) -> None:
        """Pull the plug: the emulator (or the host executable) dies with SIGKILL."""
        if self.running is not None:
            self.running.kill()
            self.running = None

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
            self.running = None

    def alive(self) -> bool:
        proc = getattr(self.running, "proc", None) or getattr(self.running, "process", None)
        return self.running is not None and (proc is None or proc.poll() is None)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def sanitizer_reports(self) -> list[str]:
        text = self.log_text()
        return [line for line in text.splitlines() if any(mark in line for mark in SANITIZER_MARKS)]


def make_board(kind: str, state_dir: Path, *, trusted_keys: tuple = (), sim_profile: str = "stm32l4r5",
               sim_baud: int = 0):
    """``kind``: ``sim`` (the Python simulator playing ``sim_profile``) or a firmware board. Not started."""
    if kind == "sim":
        from hil_tests.support import Simulator

        args: list[str] = []
        for key in trusted_keys:
            args += ["--trusted-key", str(key)]
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        return Simulator(sim_profile, sim_baud, Path(state_dir) / "state", extra_args=tuple(args))
    return FirmwareBoard(kind, Path(state_dir) / "slots.bin", trusted_keys)
