"""The gateway's serial device: one connection, kept up with backoff, used by one caller at a time.

    session = SerialSession(PortOptions("/dev/ttyACM0"), expect_profile=lambda: "stm32h743")
    session.connect_once()          # at start-up: False when nobody answers (the thread keeps trying)
    session.start(on_change)        # reconnects with backoff; polls an idle device; on_change(connected)
    session.call(lambda d: d.info(), what="INFO")   # Unavailable when the device is not there
    session.stop()

A link failure (port gone, no answer within the bounded wait) closes the connection and hands the
reconnection to the session's thread; a refusal (NAK) or a failed check leaves the link up. A device
that reports another profile than the gateway's configuration is never used: at start-up that is a
one-line error, later a logged error and a retry.

Device-side code: the standard library and firmware_bridge (pyserial).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from firmware_bridge.errors import BridgeError, DeviceRefused
from firmware_bridge.host import Device, connect
from firmware_bridge.link import PortOptions
from firmware_bridge.protocol import DeviceHello
from lepton_edge.errors import BadInput, CheckFailed, Unavailable

log = logging.getLogger("lepton_edge.gateway")

T = TypeVar("T")

FAILURE_CHECK_S = 0.25  # how often an idle session looks at its port


@dataclass(frozen=True)
class SerialSessionOptions:
    hello_timeout_s: float = 5.0
    poll_interval_s: float = 5.0    # an idle device is asked for INFO this often, so a lost one is noticed
    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0


class DeviceUnavailable(Unavailable):
    """No device answers on the gateway's port right now."""


class SerialSession:
    def __init__(self, port: PortOptions, *, expect_profile: Callable[[], str],
                 options: SerialSessionOptions = SerialSessionOptions()) -> None:
        self.port, self.expect_profile, self.options = port, expect_profile, options
        self.last_error: str | None = "not connected yet"
        self.connects = 0
        self._device: Device | None = None
        self._lock = threading.Lock()           # one caller on the line at a time
        self._stop = threading.Event()
        self._wake = threading.Event()          # a call lost the link: reconnect now, not at the next poll
        self._on_change: Callable[[bool], None] = lambda connected: None
        self._thread = threading.Thread(target=self._run, name="serial", daemon=True)

    @property
    def connected(self) -> bool:
        return self._device is not None

    @property
    def hello(self) -> DeviceHello | None:
        device = self._device
        return None if device is None else device.hello

    # --- connecting ------------------------------------------------------------------------------

    def connect_once(self) -> bool:
        """One attempt: True when a device of the expected profile answered HELLO. BadInput when it is
        another profile (the wrong board on this port)."""
        try:
            device = connect(self.port, hello_timeout=self.options.hello_timeout_s)
        except BridgeError as exc:
            self.last_error = str(exc)
            return False
        hello, expected = device.hello, self.expect_profile()
        if hello is None or hello.profile != expected:
            device.close()
            got = hello.profile if hello else "nothing"
            self.last_error = f"the device on {self.port.url} reports profile {got}, the configuration says {expected}"
            raise BadInput(self.last_error)
        with self._lock:
            self._device = device
        self.last_error = None
        self.connects += 1
        log.info("device on %s: %s, firmware %s, %s B of RAM for the arena, %s B per slot", self.port.url,
                 hello.profile, hello.firmware, f"{hello.arena_ram_bytes:,}", f"{hello.slot_bytes:,}")
        return True

    def start(self, on_change: Callable[[bool], None]) -> None:
        """Keep the device connected from now on; ``on_change(True)`` after each (re)connection."""
        self._on_change = on_change
        self._thread.start()

    def stop(self) -> None:
        """Stop reconnecting and close the port. A transfer in progress fails at once (the device keeps its
        previous model) instead of holding the shutdown for the rest of the transfer."""
        self._stop.set()
        self._wake.set()
        device = self._device
        if device is not None:
            device.close()  # without the lock, which a caller on the line holds: its next read or write fails
        if self._thread.is_alive():
            self._thread.join(10)
        with self._lock:
            self._device = None

    # --- using the device ------------------------------------------------------------------------

    def call(self, fn: Callable[[Device], T], *, what: str, wait_s: float | None = None) -> T:
        """``fn(device)`` with the line to itself. ``wait_s``: how long to wait for another caller to finish
        (None: as long as it takes; a flash can take minutes at 115 200 baud)."""
        if not self._lock.acquire(timeout=-1 if wait_s is None else wait_s):
            raise DeviceUnavailable(f"the device on {self.port.url} is busy ({what} waited {wait_s:g} s)")
        lost = None
        try:
            device = self._device
            if device is None:
                raise DeviceUnavailable(f"no device on {self.port.url} ({self.last_error})")
            try:
                return fn(device)
            except (DeviceRefused, CheckFailed, BadInput):
                raise  # the device answered: the link is fine
            except BridgeError as exc:
                lost = str(exc)
                self._device = None
                device.close()
                raise
        finally:
            self._lock.release()
            if lost is not None:
                self._lost(lost)

    def _lost(self, reason: str) -> None:
        self.last_error = reason
        if self._stop.is_set():
            return  # stop() closed the port
        log.warning("lost the device on %s: %s; reconnecting", self.port.url, reason)
        self._wake.set()
        self._notify(False)

    def _notify(self, connected: bool) -> None:
        try:
            self._on_change(connected)
        except Exception:  # a failing listener must not stop the reconnection
            log.exception("gateway: handling a %s device failed", "connected" if connected else "lost")

    # --- the thread ------------------------------------------------------------------------------

    def _idle_wait(self) -> bool:
        """Wait for the next poll; False when woken early. A port that failed (unplugged, closed by the
        peer) is dropped at once rather than at the next poll."""
        deadline = time.monotonic() + self.options.poll_interval_s
        while time.monotonic() < deadline:
            if self._wake.wait(min(FAILURE_CHECK_S, max(0.0, deadline - time.monotonic()))):
                self._wake.clear()
                return False
            device = self._device
            if device is not None and device.link.failure:
                self._drop_failed(device)
                return False
        return not self._stop.is_set() and self.connected

    def _drop_failed(self, device: Device) -> None:
        with self._lock:
            if self._device is not device:
                return
            self._device = None
        device.close()
        self._lost(f"the device on {self.port.url} went away: {device.link.failure}")

    def _run(self) -> None:
        backoff = self.options.min_backoff_s
        mismatch_logged = None
        while not self._stop.is_set():
            if self.connected:
                if not self._idle_wait():
                    continue
                try:
                    self.call(lambda d: d.info(), what="INFO", wait_s=0)  # busy is alive enough
                except Unavailable:
                    pass
                except BridgeError:
                    pass  # _lost() has logged it and woken us up
                continue
            try:
                up = self.connect_once()
            except BadInput as exc:
                up = False
                if mismatch_logged != str(exc):
                    log.error("%s; not using it", exc)
                    mismatch_logged = str(exc)
            if up:
                backoff = self.options.min_backoff_s
                mismatch_logged = None
                self._notify(True)
                continue
            delay = backoff * random.uniform(0.8, 1.2)
            log.debug("no device on %s (%s); next try in %.1f s", self.port.url, self.last_error, delay)
            backoff = min(backoff * 2, self.options.max_backoff_s)
            self._wake.wait(delay)
            self._wake.clear()
