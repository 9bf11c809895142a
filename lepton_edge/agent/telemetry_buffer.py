"""Telemetry kept until the controller says it is committed (``telemetry/ack``), and resent meanwhile.

One implementation for the agent (and so the serial gateway) and the device simulator:

* every start has a boot id (:func:`lepton_edge.mqtt.new_boot_id`); ``seq`` counts from 0 per boot;
* each record sent is kept, as the exact bytes sent, until a :class:`TelemetryAck` of this boot names
  its seq; at most ``capacity`` records (default 360), the oldest dropped first (``dropped``);
* a record still unacknowledged ``resend_s`` after it was last sent (default 30 s) is sent again, the
  same bytes, and so is every unacknowledged record after each reconnect;
* but only once this device has seen at least one ack: a controller that never acks (one from before
  acks) gets every record once, as before, and no timer runs.

:class:`TelemetryBuffer` is the bookkeeping (no I/O, no clock, no lock); :class:`TelemetrySender`
wires it to an :class:`~lepton_edge.mqtt.MqttClient`: it publishes, listens on ``telemetry/ack``,
and runs the resend timer on the client's network loop. Safe to call from any thread.

Device-side code: standard library and paho-mqtt (through the MQTT client).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lepton_edge.mqtt import (
    DeviceTopics,
    MqttClient,
    PayloadError,
    Telemetry,
    TelemetryAck,
    TimerHandle,
    new_boot_id,
)

log = logging.getLogger(__name__)

DEFAULT_RESEND_S = 30.0
DEFAULT_CAPACITY = 360
TIMER_SLACK_S = 0.001  # the timer fires after the record falls due, never a rounding error before


@dataclass
class ResendCounts:
    """``records``: made this boot (distinct seqs); ``confirmed``: of those, named by an ack while kept;
    ``unconfirmed`` = records - confirmed (kept, or dropped before an ack); ``resent``: publishes of a
    record again; ``dropped``: pushed out of the full buffer unconfirmed; ``acks``: ack messages seen."""

    records: int = 0
    confirmed: int = 0
    resent: int = 0
    dropped: int = 0
    acks: int = 0

    @property
    def unconfirmed(self) -> int:
        return self.records - self.confirmed


class TelemetryBuffer:
    """The records of one boot awaiting their ack: seq -> (bytes, when last sent), oldest seq first."""

    def __init__(self, boot: str, capacity: int = DEFAULT_CAPACITY, resend_s: float = DEFAULT_RESEND_S) -> None:
        if capacity < 1 or resend_s <= 0:
            raise ValueError("the telemetry buffer needs a capacity of at least 1 and a positive resend interval")
        self.boot, self.capacity, self.resend_s = boot, capacity, resend_s
        self._kept: dict[int, tuple[bytes, float]] = {}  # insertion order = seq order
        self.acked = False  # an ack has been seen: resending is on
        self.counts = ResendCounts()

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def seqs(self) -> list[int]:
        return list(self._kept)

    def add(self, seq: int, payload: bytes, now: float) -> None:
        """A record just sent for the first time."""
        while len(self._kept) >= self.capacity:
            del self._kept[next(iter(self._kept))]
            self.counts.dropped += 1
        self._kept[seq] = (payload, now)
        self.counts.records += 1

    def ack(self, ack: TelemetryAck) -> int:
        """Forget the records ``ack`` names (another boot's ack only turns resending on); how many it confirmed."""
        self.acked = True
        confirmed = 0
        if ack.boot == self.boot:
            for seq in ack.seqs:
                if self._kept.pop(seq, None) is not None:
                    confirmed += 1
        self.counts.confirmed += confirmed
        self.counts.acks += 1
        return confirmed

    def due(self, now: float) -> list[bytes]:
        """The records to send again now (marked as sent now): those last sent ``resend_s`` ago or more."""
        return self._take(now, lambda sent: now - sent >= self.resend_s)

    def everything(self, now: float) -> list[bytes]:
        """Every kept record (after a reconnect), marked as sent now."""
        return self._take(now, lambda _sent: True)

    def next_due(self) -> float | None:
        """When the next record falls due (None: nothing to resend, or no ack seen yet)."""
        if not self.acked or not self._kept:
            return None
        return min(sent for _payload, sent in self._kept.values()) + self.resend_s

    def _take(self, now: float, pick: Callable[[float], bool]) -> list[bytes]:
        if not self.acked:
            return []
        out = []
        for seq, (payload, sent) in self._kept.items():
            if pick(sent):
                self._kept[seq] = (payload, now)
                out.append(payload)
        self.counts.resent += len(out)
        return out


class TelemetrySender:
    """Publishes a device's telemetry on ``client`` and resends it until acknowledged (module docstring).

    Call :meth:`on_reconnect` from the client's ``on_connect``. ``on_broker_ack`` runs (on the loop
    thread) when the broker acknowledges a record's first publish (PUBACK at QoS 1).
    """

    def __init__(self, client: MqttClient, topics: DeviceTopics, *, boot: str | None = None,
                 capacity: int = DEFAULT_CAPACITY, resend_s: float = DEFAULT_RESEND_S, qos: int = 1,
                 on_broker_ack: Callable[[], None] | None = None) -> None:
        self.client, self.topics, self.qos = client, topics, qos
        self.buffer = TelemetryBuffer(boot or new_boot_id(), capacity, resend_s)
        self.seq = 0
        self._on_broker_ack = on_broker_ack
        self._lock = threading.Lock()
        self._timer: TimerHandle | None = None
        self._stopped = False
        client.subscribe(topics.telemetry_ack, self._on_ack, qos=0)

    @property
    def boot(self) -> str:
        return self.buffer.boot

    @property
    def counts(self) -> ResendCounts:
        return self.buffer.counts

    def pending(self) -> list[int]:
        """The seqs kept, awaiting their ack."""
        with self._lock:
            return self.buffer.seqs

    def send(self, values: dict[str, Any], ts: float | None = None) -> Telemetry:
        """Publish the next record (seq and boot filled in) and keep it until acknowledged."""
        with self._lock:
            telemetry = Telemetry(self.seq, time.time() if ts is None else ts, values, self.buffer.boot)
            payload = telemetry.to_bytes()
            self.seq += 1
            self.buffer.add(telemetry.seq, payload, time.monotonic())
            self._arm()
        self.client.publish(self.topics.telemetry, payload, qos=self.qos, on_ack=self._on_broker_ack)
        return telemetry

    def on_reconnect(self) -> None:
        """Every unacknowledged record again (once an ack has been seen)."""
        with self._lock:
            again = self.buffer.everything(time.monotonic())
            self._arm()
        self._publish(again)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _on_ack(self, _topic: str, payload: bytes) -> None:  # loop thread
        try:
            ack = TelemetryAck.from_bytes(payload)
        except PayloadError as exc:
            log.warning("%s: ignored a telemetry ack: %s", self.topics.device, exc)
            return
        with self._lock:
            self.buffer.ack(ack)
            self._arm()

    def _arm(self) -> None:
        """Hold one timer for the earliest due record (caller holds the lock)."""
        due = self.buffer.next_due()
        if self._stopped or due is None or self._timer is not None:
            return
        self._timer = self.client.loop.call_later(max(0.0, due - time.monotonic()) + TIMER_SLACK_S, self._tick)

    def _tick(self) -> None:  # loop thread
        with self._lock:
            self._timer = None
            if not self.client.connected:
                return  # on_reconnect sends them all and re-arms
            again = self.buffer.due(time.monotonic())
            self._arm()
        self._publish(again)

    def _publish(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            self.client.publish(self.topics.telemetry, payload, qos=self.qos)
