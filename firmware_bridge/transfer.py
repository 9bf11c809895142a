"""Send a large buffer as data frames with a window of frames in flight (selective repeat).

Each transmission gets its own sequence number, so an answer names exactly the frame it answers.
A serial line delivers in order and the device answers in order, so an answer to a later frame means
every earlier unanswered frame (or its answer) was lost: those are sent again at once. A timer only
catches losses at the tail. What is sent again is cut to the current frame size, which
:class:`~firmware_bridge.sizing.FrameSizer` adapts to the line's error rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from firmware_bridge import protocol as p
from firmware_bridge.errors import BridgeError, DeviceRebooted, DeviceRefused, DeviceTimeout
from firmware_bridge.frame import wire_size
from firmware_bridge.link import Link
from firmware_bridge.protocol import Msg, Nak
from firmware_bridge.ranges import RangeSet
from firmware_bridge.sizing import FrameSizer, LineTimer

ProgressFn = Callable[[int, int], None]
NO_PROGRESS_TIMEOUT_S = 10.0


class TransferLost(BridgeError):
    """The device no longer has this transfer open (it restarted without saying so, or gave up)."""


@dataclass
class _Flight:
    offset: int
    length: int
    order: int
    sent_at: float
    wire: int


@dataclass
class UploadStats:
    frames: int = 0
    lost: int = 0  # frames (or their answers) found lost and sent again
    timeouts: int = 0
    bytes_sent: int = 0  # payload bytes sent, repeats included


class UploadDevice(Protocol):
    """What :func:`upload` uses of a :class:`firmware_bridge.host.Device`."""

    link: Link
    sizer: FrameSizer
    timer: LineTimer
    @property
    def hello(self) -> p.DeviceHello: ...

    def next_seq(self) -> int: ...

    def note_announce(self, payload: bytes) -> None: ...


def upload(device: UploadDevice, kind: int, xfer: int, data: bytes, *, start: int = 0,
           progress: ProgressFn | None = None, no_progress_timeout: float = NO_PROGRESS_TIMEOUT_S) -> UploadStats:
    """Send ``data[start:]`` as ``kind`` frames (MODEL_DATA or INPUT_DATA) until the device holds all of it.

    ``device`` is a :class:`firmware_bridge.host.Device` (its link, sizer, timer, sequence numbers).
    """
    link, sizer, timer, hello = device.link, device.sizer, device.timer, device.hello
    total = len(data)
    pending = RangeSet([(start, total)])
    held = RangeSet([(0, start)])
    flights: dict[int, _Flight] = {}
    stats = UploadStats()
    order = 0
    last_answer = time.monotonic()
    window = max(1, hello.window)
    header = p.DATA_HEADER.size
    answer_wire = wire_size(p.DataAck.SIZE)

    def give_back(flight: _Flight) -> None:
        pending.add(flight.offset, flight.offset + flight.length)
        for s, e in list(held):
            pending.remove(s, e)

    while pending or flights:
        # Fill the window.
        while pending and len(flights) < window:
            first = pending.first()
            assert first is not None  # pending is not empty
            s, e = first
            n = max(1, min(e - s, sizer.size - header))
            pending.remove(s, s + n)
            seq = device.next_seq()
            wire = link.send(kind, seq, p.pack_data(xfer, s, data[s:s + n]))
            order += 1
            flights[seq] = _Flight(s, n, order, time.monotonic(), wire + answer_wire)
            stats.frames += 1
            stats.bytes_sent += n
        if not flights:
            continue
        head_seq = min(flights, key=lambda k: flights[k].order)
        head = flights[head_seq]
        started = max(head.sent_at, last_answer)
        deadline = started + timer.timeout(head.wire)
        frame = link.recv(deadline - time.monotonic())
        now = time.monotonic()
        if frame is None:
            if now - last_answer > no_progress_timeout:
                raise DeviceTimeout(f"the device on {link.name} stopped answering during the transfer "
                                    f"({held.prefix()} of {total} bytes held)")
            if now >= deadline:
                del flights[head_seq]
                give_back(head)
                sizer.loss(head.length)
                stats.timeouts += 1
                stats.lost += 1
            continue
        if frame.type == Msg.ANNOUNCE:
            device.note_announce(frame.payload)
            raise DeviceRebooted(f"the device on {link.name} restarted during the transfer")
        flight = flights.get(frame.seq)
        if frame.type == Msg.ACK:
            try:
                ack = p.DataAck.unpack(frame.payload)
            except p.MalformedPayload:
                continue
            if ack.xfer != xfer:
                continue
            previous_answer, last_answer = last_answer, now
            held.add(ack.offset, ack.offset + ack.length)
            held.add(0, ack.contiguous)
            pending.remove(ack.offset, ack.offset + ack.length)
            pending.remove(0, ack.contiguous)
            if flight is not None:
                del flights[frame.seq]
                sizer.success(flight.length)
                timer.sample(now - max(flight.sent_at, previous_answer), flight.wire)
                # Everything sent before this frame and still unanswered was lost on the way.
                for seq, other in list(flights.items()):
                    if other.order < flight.order:
                        del flights[seq]
                        give_back(other)
                        sizer.loss(other.length)
                        stats.lost += 1
            for seq, other in list(flights.items()):  # answered through another copy
                if held.contains(other.offset, other.offset + other.length):
                    del flights[seq]
            if progress is not None:
                progress(min(held.total, total), total)
        elif frame.type == Msg.NAK and flight is not None:
            try:
                nak = p.NakInfo.unpack(frame.payload)
            except p.MalformedPayload:
                continue
            del flights[frame.seq]
            if nak.code == Nak.SEQUENCE and nak.detail == p.NO_TRANSFER:
                raise TransferLost(nak.message)
            # TOO_LARGE for a frame within the device's limit: its delimiter was lost on the line and
            # it reached the device merged with the next frame. That is a loss like any other.
            merged = nak.code == Nak.TOO_LARGE and header + flight.length <= hello.max_payload
            if nak.code in (Nak.CRC, Nak.BUSY, Nak.SEQUENCE) or merged:
                last_answer = now
                give_back(flight)
                sizer.loss(flight.length)
                stats.lost += 1
                if nak.code == Nak.BUSY:
                    time.sleep(0.05)
                continue
            raise DeviceRefused(nak, f"{Msg(kind).name} at offset {flight.offset}")
    return stats
