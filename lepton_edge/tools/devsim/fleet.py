"""Many simulated devices on one network loop (:class:`SimFleet`), and how a fleet is split (:func:`plan_fleet`).

Device ``i`` is ``f"{prefix}{i:05d}"`` (:func:`device_id`). Which devices fail their updates and which
run slower after one is decided once for the whole fleet by :func:`plan_fleet` (exactly
``round(rate * n)`` of each, drawn with ``random.Random(seed)``, the two sets disjoint), so that a
fleet split over several processes is the same fleet as one process would run.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lepton_edge.errors import BadInput
from lepton_edge.mqtt import TERMINAL_OTA_STATES, BrokerConfig, NetworkLoop
from lepton_edge.tools.devsim.device import SimDevice, SimOptions
from lepton_edge.tools.devsim.eventlog import EventLog

ID_DIGITS = 5
# the devices' counts that a summary sums (SimDevice.counts)
COUNT_KEYS = ("telemetry_sent", "telemetry_acked", "telemetry_confirmed", "telemetry_unconfirmed", "telemetry_resent",
              "telemetry_dropped", "ota_blocks", "ota_duplicate_blocks")
FLEET_OPTIONS = SimOptions(factory_model=True, telemetry_interval_s=1.0)


def device_id(prefix: str, i: int, digits: int = ID_DIGITS) -> str:
    return f"{prefix}{i:0{digits}d}"


@dataclass(frozen=True)
class Share:
    """One process's part of the fleet: devices ``start .. start + count - 1``."""

    start: int
    count: int
    fail: frozenset[int]
    slow: frozenset[int]


@dataclass(frozen=True)
class FleetPlan:
    devices: int
    fail: tuple[int, ...]
    slow: tuple[int, ...]
    shares: tuple[Share, ...]


def plan_fleet(devices: int, processes: int, *, fail_rate: float = 0.0, slow_rate: float = 0.0,
               seed: int = 0) -> FleetPlan:
    """Exactly ``round(rate * devices)`` failing and slow devices (disjoint), and an even split over processes."""
    n_fail, n_slow = round(fail_rate * devices), round(slow_rate * devices)
    if n_fail + n_slow > devices:
        raise BadInput(f"--fail-rate and --slow-rate pick {n_fail} + {n_slow} devices out of {devices}; "
                       "a device cannot be both")
    picked = random.Random(seed).sample(range(devices), n_fail + n_slow)
    fail, slow = tuple(sorted(picked[:n_fail])), tuple(sorted(picked[n_fail:]))
    shares = []
    for k in range(processes):
        lo, hi = k * devices // processes, (k + 1) * devices // processes
        shares.append(Share(lo, hi - lo, frozenset(i for i in fail if lo <= i < hi),
                            frozenset(i for i in slow if lo <= i < hi)))
    return FleetPlan(devices, fail, slow, tuple(shares))


Tags = Sequence[str] | Callable[[int], Sequence[str]]


def spread(broker: BrokerConfig | Sequence[BrokerConfig], i: int) -> BrokerConfig:
    """Device ``i``'s broker: a list of brokers rotated to start at broker ``i mod B`` (the client fails over
    to the next ones in turn), or ``broker[i mod B]`` of a sequence of configs."""
    if isinstance(broker, BrokerConfig):
        rotated: Callable[[int], BrokerConfig] | None = getattr(broker, "rotated", None)
        several = bool(getattr(broker, "more", None))  # a BrokerConfig that lists several brokers
        return rotated(i) if rotated is not None and several else broker
    if not broker:
        raise BadInput("no broker to connect to")
    return broker[i % len(broker)]


def each_broker(broker: BrokerConfig | Sequence[BrokerConfig]) -> list[BrokerConfig]:
    """The brokers one by one (a list-of-brokers config split into one config per broker)."""
    if not isinstance(broker, BrokerConfig):
        return list(broker)
    at: Callable[[int], BrokerConfig] | None = getattr(broker, "at", None)
    count = 1 + len(getattr(broker, "more", None) or ())
    return [at(i) for i in range(count)] if at is not None and count > 1 else [broker]


class SimFleet:
    """``count`` devices numbered ``start .. start + count - 1`` on one network loop.

    ``fail``, ``slow`` and ``erroring`` are sets of device numbers (not positions): those fail their
    updates' health check, run ``slow_factor`` times slower after an update, or see ``error_fraction``
    of their inferences fail after one. ``tags`` are every device's, or a function of the device
    number. ``telemetry_interval_s`` overrides the options'. ``log_dir``: the devices' JSONL event log
    (:mod:`~lepton_edge.tools.devsim.eventlog`), one file named ``log_name`` (default ``<prefix><start>``).
    With several brokers (a :class:`BrokerConfig` list, or a sequence of configs) device ``i`` starts on
    broker ``i mod B`` (:func:`spread`: round-robin by device number, so a fleet split over processes is
    spread the same way).
    """

    def __init__(self, broker: BrokerConfig | Sequence[BrokerConfig], count: int, *, prefix: str = "sim-",
                 start: int = 0,
                 options: SimOptions = FLEET_OPTIONS, fail: Collection[int] = (), slow: Collection[int] = (),
                 slow_factor: float = 3.0, erroring: Collection[int] = (), error_fraction: float = 0.2,
                 tags: Tags = (), telemetry_interval_s: float | None = None, log_dir: Path | None = None,
                 log_name: str | None = None, digits: int = ID_DIGITS) -> None:
        self.loop = NetworkLoop("devsim")
        self.log = EventLog(Path(log_dir), log_name or device_id(prefix, start, digits)) if log_dir else None
        if telemetry_interval_s is not None:
            options = replace(options, telemetry_interval_s=telemetry_interval_s)
        fail, slow, erroring = set(fail), set(slow), set(erroring)
        self.devices: list[SimDevice] = []
        for i in range(start, start + count):
            opts = replace(options, fail_health_check=options.fail_health_check or i in fail,
                           slow_factor=slow_factor if i in slow else options.slow_factor,
                           error_fraction=error_fraction if i in erroring else options.error_fraction,
                           tags=tuple(tags(i) if callable(tags) else tags) or options.tags)
            self.devices.append(SimDevice(device_id(prefix, i, digits), spread(broker, i), opts, self.loop,
                                          log=self.log))
        self.by_id = {d.id: d for d in self.devices}

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.devices]

    def start(self) -> None:
        self.loop.start()
        for d in self.devices:
            d.start()

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(d.client.wait_connected(max(0.0, deadline - time.monotonic())) for d in self.devices)

    def burst(self, n: int) -> None:
        """Each device publishes ``n`` telemetry messages at once (from the loop thread)."""
        def go() -> None:
            for _ in range(n):
                for d in self.devices:
                    d.send_telemetry()
        self.loop.call_soon(go)

    def stop(self, timeout: float = 5.0, drain_s: float = 5.0) -> None:
        """Telemetry stops and what is in flight gets up to ``drain_s`` to be acknowledged; then every device
        says offline and disconnects (several at a time), and the loop stops."""
        for d in self.devices:
            d.stop_telemetry()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and self._unacked() > 0:
            time.sleep(0.05)
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda d: d.stop(timeout), self.devices))
        self.loop.stop()
        if self.log is not None:
            self.log.close()

    def snapshot(self) -> dict[str, Any]:
        """Counts for a progress line: connected, models served, each device's last OTA state."""
        models: Counter[str] = Counter()
        states: Counter[str] = Counter()
        for d in self.devices:
            m = d.model
            models["none" if m is None else f"{m.name} v{m.version}"] += 1
            state = d.state
            if state is not None:
                states[state if state in TERMINAL_OTA_STATES else "updating"] += 1
        return {"devices": len(self.devices), "connected": sum(d.client.connected for d in self.devices),
                "models": dict(models), "ota": dict(states), **self.summary()}

    def _unacked(self) -> int:
        """On connected devices (an offline one would wait forever): QoS 1 messages still awaiting their PUBACK,
        and records awaiting the controller's ack where the controller acks."""
        total = 0
        for d in self.devices:
            if d.client.connected:
                s = d.client.stats()
                total += int(s["inflight"]) + int(s["queued"])
                if d.telemetry.buffer.acked:
                    total += len(d.telemetry.buffer)
        return total

    def device_counts(self) -> dict[str, dict[str, int]]:
        """Each device's :meth:`SimDevice.counts`, by device id."""
        return {d.id: d.counts() for d in self.devices}

    def summary(self) -> dict[str, Any]:
        """Sums over the devices: :data:`COUNT_KEYS` (what each means: :meth:`SimDevice.counts`), the MQTT
        clients' dropped messages and connects, and what is still awaiting a PUBACK (outstanding)."""
        stats = [d.client.stats() for d in self.devices]
        counts = Counter[str]()
        for d in self.devices:
            counts.update(d.counts())
        return {"devices": len(self.devices), **{key: counts[key] for key in COUNT_KEYS},
                "dropped": sum(int(s["dropped"]) for s in stats), "connects": sum(int(s["connects"]) for s in stats),
                "outstanding": sum(int(s["inflight"]) + int(s["queued"]) for s in stats)}
