"""What the agent reports on ``telemetry`` every N seconds (the values of a :class:`lepton_edge.mqtt.Telemetry`).

Inference count and rate, latency p50, p99 and max over the agent's recent window, errors, arena bytes,
resident memory, CPU share since the last sample, temperature where ``/sys/class/thermal`` has it,
uptime, the model's name and version, the MQTT client's in-flight, queued and dropped counts, and the
records the telemetry buffer dropped unacknowledged (``telemetry_dropped``,
:mod:`lepton_edge.agent.telemetry_buffer`, which also numbers, sends and resends the records).
Nothing else: no paths, keys, URLs or credentials.

Device-side code: standard library only (Linux ``/proc`` and ``/sys``; absent figures are left out).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lepton_edge.agent.member import FleetMember

THERMAL = Path("/sys/class/thermal")


def rss_bytes() -> int | None:
    """Resident set size of this process, from /proc/self/statm."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def temperature_c(root: Path = THERMAL) -> float | None:
    """The highest reading of the board's thermal zones, in degrees Celsius (None without any)."""
    readings = []
    try:
        zones = sorted(root.glob("thermal_zone*/temp"))
    except OSError:
        return None
    for zone in zones:
        try:
            readings.append(int(zone.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(readings) if readings else None


class TelemetrySampler:
    """Turns the agent's counters into one record's values per call; rates are since the last call.

    ``mqtt_stats()`` gives the client's ``inflight``, ``queued``, ``dropped`` and the buffer's
    ``telemetry_dropped`` (any may be absent)."""

    def __init__(self, agent: FleetMember, mqtt_stats: Callable[[], dict[str, Any]]) -> None:
        self.agent = agent
        self.mqtt_stats = mqtt_stats
        self._last_wall = time.monotonic()
        self._last_cpu = _cpu_seconds()
        self._last_count: int | None = None  # a gateway's device may have counted before we started

    def sample(self) -> dict[str, Any]:
        agent, metrics = self.agent, self.agent.metrics
        now, cpu = time.monotonic(), _cpu_seconds()
        elapsed = max(1e-6, now - self._last_wall)
        values: dict[str, Any] = {
            "uptime_s": round(metrics.uptime_s(), 3),
            "inferences": metrics.inference_count,
            "errors": metrics.error_count,
            "cpu_percent": round(100.0 * (cpu - self._last_cpu) / elapsed, 2),
        }
        latency = metrics.latency_percentiles()
        for key, name in (("p50", "latency_p50_ms"), ("p99", "latency_p99_ms"), ("max", "latency_max_ms")):
            if isinstance(latency.get(key), (int, float)):
                values[name] = latency[key]
        served = agent.current()
        if served is not None:
            values["model_name"], values["model_version"] = served.name, served.version
        values.update(agent.telemetry_extra())  # a gateway counts the device's own inferences
        count = values["inferences"]
        if self._last_count is not None:  # the device restarted when its count went down: rate from 0
            values["inferences_per_s"] = round((count - self._last_count if count >= self._last_count else count)
                                               / elapsed, 3)
        self._last_wall, self._last_cpu, self._last_count = now, cpu, count
        for name, value in (("rss_bytes", rss_bytes()), ("temperature_c", temperature_c())):
            if value is not None:
                values[name] = value
        stats = self.mqtt_stats()
        for key, name in (("inflight", "mqtt_inflight"), ("queued", "mqtt_queued"), ("dropped", "mqtt_dropped"),
                          ("telemetry_dropped", "telemetry_dropped")):
            if isinstance(stats.get(key), int):
                values[name] = stats[key]
        return values


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system
