"""The host end of the serial line: a port opened through pyserial's ``serial_for_url`` (real ports,
``loop://`` and ``socket://`` alike), a reader thread that turns bytes into frames, and byte counters.

Opening a port does not reset the board unless asked: DTR and RTS are set before the port opens
(many boards reset on a DTR edge and lose the first bytes), and ``reset=True`` pulses them as the
Arduino and ESP32 auto-reset circuits expect.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from firmware_bridge.errors import PortError
from firmware_bridge.frame import Frame, FrameReader, encode_frame

if TYPE_CHECKING:
    from serial import SerialBase  # pyserial: untyped

HOST_MAX_PAYLOAD = 16384  # the largest answer the host takes (said in HELLO)


@dataclass(frozen=True)
class PortOptions:
    url: str
    baud: int = 115200
    dtr: bool = True  # USB CDC firmware often waits for DTR before it talks
    rts: bool = False
    reset: bool = False


def open_serial(options: PortOptions) -> SerialBase:
    """Open the port without a reset (unless ``options.reset``); :class:`PortError` if it cannot be."""
    import serial

    try:
        ser = serial.serial_for_url(options.url, baudrate=options.baud or 115200, timeout=0.05,
                                    write_timeout=None, do_not_open=True)
        ser.dtr = options.dtr
        ser.rts = options.rts
        ser.open()
    except (serial.SerialException, ValueError, OSError) as exc:
        raise PortError(f"cannot open {options.url}: {_reason(exc)}") from None
    if options.reset:
        pulse_reset(ser, options)
    return ser


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "returned no data" in text:  # pyserial's words for a port whose other end closed
        return "the port was closed or disconnected"
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text


def pulse_reset(ser: SerialBase, options: PortOptions) -> None:
    """Hold the board in reset for 100 ms through RTS (ESP32: EN) with DTR released (ESP32: IO0 high),
    then release; a DTR edge resets the boards wired the Arduino way. Ports without modem lines
    (pseudo-terminals, sockets) ignore it."""
    # Setting a modem line is an ioctl (TIOCMBIS/TIOCMBIC) that a pseudo-terminal refuses with OSError
    # (ENOTTY, EINVAL); pyserial's own errors (SerialException) are OSErrors too. socket:// and loop://
    # ignore the lines themselves.
    with contextlib.suppress(OSError):
        ser.dtr = False
        ser.rts = True
        time.sleep(0.1)
        ser.rts = options.rts
        time.sleep(0.05)
        ser.dtr = options.dtr


class Link:
    """Frames to and from an open port. One thread reads; the caller writes and takes frames."""

    def __init__(self, ser: SerialBase, name: str) -> None:
        self.ser = ser
        self.name = name
        self.reader = FrameReader(HOST_MAX_PAYLOAD)
        self.bytes_out = 0
        self.bytes_in = 0
        self._frames: queue.Queue[Frame] = queue.Queue()
        self._failure: str | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name=f"link-{name}", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        while not self._closing.is_set():
            try:
                data = self.ser.read(max(1, self.ser.in_waiting))
            except Exception as exc:  # any failure of the port ends the link
                if not self._closing.is_set():
                    self._failure = _reason(exc) or type(exc).__name__
                break
            if not data:
                continue
            self.bytes_in += len(data)
            for event in self.reader.feed(data):
                if isinstance(event, Frame):
                    self._frames.put(event)

    @property
    def failure(self) -> str | None:
        """Why the port stopped working (it was unplugged, the peer closed it), or None."""
        return self._failure

    def write(self, data: bytes) -> None:
        if self._failure:
            raise PortError(f"the device on {self.name} went away: {self._failure}")
        try:
            self.ser.write(data)
        except Exception as exc:
            raise PortError(f"{self.name}: write failed: {_reason(exc)}") from None
        self.bytes_out += len(data)

    def send(self, type_: int, seq: int, payload: bytes = b"") -> int:
        """Send one frame; return its size on the line."""
        data = encode_frame(type_, seq, payload)
        self.write(data)
        return len(data)

    def recv(self, timeout: float) -> Frame | None:
        """The next frame, or None after ``timeout`` seconds. :class:`PortError` once the port is gone."""
        try:
            return self._frames.get(timeout=max(0.0, timeout))
        except queue.Empty:
            if self._failure:
                raise PortError(f"the device on {self.name} went away: {self._failure}") from None
            return None

    def drain(self) -> None:
        while True:
            try:
                self._frames.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        self._closing.set()
        # Both fail only when the port is already gone (unplugged: EIO, ENXIO; the peer closed the socket),
        # with OSError (SerialException is one); the link is closed all the same.
        if hasattr(self.ser, "cancel_read"):  # posix ports and socket://; wakes the reader thread
            with contextlib.suppress(OSError):
                self.ser.cancel_read()
        self._thread.join(timeout=1.0)
        with contextlib.suppress(OSError):
            self.ser.close()
