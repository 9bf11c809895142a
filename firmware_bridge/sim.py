"""The simulated device: :class:`~firmware_bridge.device.DeviceCore` on a pseudo-terminal, with a line
that can be slow (``baud``) and noisy (bytes dropped and corrupted), as a real serial link can be."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from firmware_bridge.device import DeviceCore, DeviceIdentity
from firmware_bridge.faults import LineFaults, Pacer
from firmware_bridge.slots import SlotStore

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FIRMWARE = "lepton-edge-sim"


class Transport(Protocol):
    port: str

    def read(self, size: int, timeout: float) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass
class DeviceSimOptions:
    profile: str  # name or path of a device profile
    state_dir: Path
    baud: int = 115200  # 0: no limit
    drop_rate: float = 0.0
    corrupt_rate: float = 0.0
    seed: int | None = None
    max_payload: int = 4096
    window: int = 8
    boot_ms: int = 100  # after a RESET the device hears nothing for this long
    trusted_keys: tuple[Ed25519PublicKey, ...] = field(default_factory=tuple)


def default_state_dir(profile_name: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lepton-edge" / "sim" / profile_name


def identity_for(profile_name_or_path: str, max_payload: int, window: int) -> DeviceIdentity:
    from firmware_bridge.kit import __version__, load_profile

    profile = load_profile(profile_name_or_path)
    return DeviceIdentity(profile.name, f"{FIRMWARE} {__version__}", profile.ram_budget_bytes,
                          profile.flash_budget_bytes, max_payload, window)


class SimulatedDevice:
    """Two threads, as a UART has two wires: one reads and answers, one writes at the line's pace."""

    def __init__(self, options: DeviceSimOptions, transport: Transport,
                 log: Callable[[str], None] = lambda _msg: None) -> None:
        if not 16 <= options.max_payload <= 0xFFFF:
            raise ValueError("max_payload must be in 16..65535")
        self.options = options
        self.transport = transport
        self.log = log
        self.identity = identity_for(options.profile, options.max_payload, options.window)
        self.store = SlotStore(options.state_dir)
        self.rx_faults = LineFaults(options.drop_rate, options.corrupt_rate,
                                    None if options.seed is None else options.seed)
        self.tx_faults = LineFaults(options.drop_rate, options.corrupt_rate,
                                    None if options.seed is None else options.seed + 1)
        self._rx_pace, self._tx_pace = Pacer(options.baud), Pacer(options.baud)
        self._tx: queue.Queue[bytes] = queue.Queue()
        self._stop = threading.Event()
        self._deaf_until = 0.0
        self.core = self._boot()

    @property
    def port(self) -> str:
        return self.transport.port

    def _boot(self) -> DeviceCore:
        core = DeviceCore(self.identity, self.store, trusted_keys=self.options.trusted_keys)
        if core.boot_error:
            self.log(f"boot: {core.boot_error}")
        self._tx.put(core.announce())
        return core

    def _reboot(self) -> None:
        self.log("reset")
        self._deaf_until = time.monotonic() + self.options.boot_ms / 1000
        self.core = self._boot()

    def _rx_loop(self) -> None:
        chunk = self._rx_pace.chunk()
        while not self._stop.is_set():
            data = self.transport.read(chunk, 0.1)
            if not data:
                continue
            self._rx_pace.wait(len(data), busy=len(data) == chunk)
            if time.monotonic() < self._deaf_until:
                continue
            active_before = self.core.active
            for reply in self.core.feed(self.rx_faults.apply(data)):
                self._tx.put(reply)
            if self.core.active is not active_before:
                self.log(f"active: {self.core.describe()}")
            if self.core.reset_requested:
                self._reboot()

    def _tx_loop(self) -> None:
        chunk = self._tx_pace.chunk()
        while not self._stop.is_set():
            try:
                data = self._tx.get(timeout=0.1)
            except queue.Empty:
                continue
            data = self.tx_faults.apply(data)
            for start in range(0, len(data), chunk):
                part = data[start:start + chunk]
                self._tx_pace.wait(len(part), busy=start > 0)
                self.transport.write(part)

    def start(self) -> None:
        self._threads = [threading.Thread(target=target, name=f"sim-{target.__name__}", daemon=True)
                         for target in (self._rx_loop, self._tx_loop)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)

    def close(self) -> None:
        self.stop()
        for thread in getattr(self, "_threads", ()):  # they poll the stop flag every 0.1 s
            thread.join(timeout=2)
        self.transport.close()
