"""``GET /metrics``: the whole fleet in Prometheus text format, built at each scrape.

One custom collector reads what the controller already keeps: each device's latest status and
telemetry (``controller.devices()``, from SQLite), its rollouts (``controller.rollouts()``, when the
controller has them) and its in-memory counters (blocks served, messages per kind, bad messages,
records that could not be written). Nothing is kept between scrapes: each scrape gets a fresh
:class:`CollectorRegistry`, so two controllers in one process never share a metric.

Per device (labels ``device``, ``fleet``, ``profile``): ``lepton_device_up``,
``lepton_device_last_seen_seconds`` (unix time), ``lepton_device_model_info{name,version,sha256}``
and ``lepton_device_latency_budget_seconds`` (the served model's, from its status). From the latest
telemetry, while the device is up (an offline device's last figures would look current):
``lepton_device_inferences_total`` and ``lepton_device_errors_total`` (the device's own cumulative
counts: they restart at 0 with the agent, which ``rate()`` takes as a counter reset), latency p50/p99
(seconds), memory (resident bytes), the arena (a microcontroller behind a gateway: its arena and the
high-water marks of the arena's head and tail). Per rollout: devices per phase and its state.
Fleet-wide: OTA bytes and blocks served, messages received per kind, rejected ones per reason,
records that could not be written, telemetry duplicates not written again, messages left to other
replicas, the live replicas, and how long this scrape took to collect.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from lepton_edge.fleet.rollout import ENDED_STATES, PHASES, STATES
from lepton_edge.mqtt.router import BAD_PAYLOAD, BAD_TOPIC, EMPTY

if TYPE_CHECKING:
    from lepton_edge.fleet.controller import Controller

# Prometheus text format 0.0.4: what every Prometheus 2.x reads (prometheus_client >= 0.17 writes it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DEVICE_LABELS = ("device", "fleet", "profile")
ROLLOUT_LABELS = ("rollout", "name", "version")
# A finished rollout stays in /metrics this long after its last change; older ones leave (bounded series).
FINISHED_ROLLOUT_KEEP_S = 7 * 24 * 3600.0
REJECT_REASONS = (BAD_PAYLOAD, BAD_TOPIC, EMPTY)


def render_metrics(controller: Controller) -> tuple[bytes, str]:
    """The body and its content type."""
    return generate_latest(fleet_registry(controller)), CONTENT_TYPE


def fleet_registry(controller: Controller) -> CollectorRegistry:
    """A registry of its own holding one :class:`FleetCollector` for ``controller``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(controller))
    return registry


def _number(values: dict[str, Any] | None, key: str) -> float | None:
    """A finite number from a telemetry payload as the device sent it (anything else reads as absent)."""
    value = values.get(key) if isinstance(values, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _ms(values: dict[str, Any] | None, key: str) -> float | None:
    ms = _number(values, key)
    return None if ms is None else ms / 1000.0


class FleetCollector:
    """Collects the fleet's metrics from ``controller`` on every scrape (a prometheus_client collector)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        yield from device_metrics(self.controller.devices(), self.controller.options.fleet)
        yield from rollout_metrics(self._rollout_list())
        yield from self._controller()
        scrape = GaugeMetricFamily("lepton_scrape_duration_seconds",
                                   "Time the controller took to collect this scrape's metrics")
        scrape.add_metric([], time.perf_counter() - started)
        yield scrape

    def _rollout_list(self) -> list[dict[str, Any]]:
        """The rollouts to show, each with its devices (the listing leaves them out)."""
        now, out = time.time(), []
        for r in self.controller.rollouts():
            updated = r.get("updated")
            if r.get("state") in ENDED_STATES and isinstance(updated, (int, float)) \
                    and now - updated > FINISHED_ROLLOUT_KEEP_S:
                continue
            out.append(r if "devices" in r else self.controller.rollout(r["rollout"]))
        return out

    def _controller(self) -> Iterator[Metric]:
        c = self.controller
        bytes_served = CounterMetricFamily("lepton_ota_bytes_served", "Model bytes sent to devices in OTA blocks")
        bytes_served.add_metric([], float(c.counters.bytes_served))
        blocks_served = CounterMetricFamily("lepton_ota_blocks_served", "OTA blocks sent to devices")
        blocks_served.add_metric([], float(c.counters.blocks_served))
        ingested = CounterMetricFamily("lepton_messages_ingested", "Messages received from devices per kind, "
                                       "rejected ones included", labels=("kind",))
        for kind, n in sorted(dict(c.router.messages).items()):
            ingested.add_metric([kind], float(n))
        rejected = CounterMetricFamily("lepton_messages_rejected", "Messages dropped as bad per reason (payload: "
                                       "not the schema; topic: names no device; empty)", labels=("reason",))
        bad = dict(c.router.bad)
        for reason in REJECT_REASONS:
            rejected.add_metric([reason], float(bad.get(reason, 0)))
        failed = CounterMetricFamily("lepton_records_write_failed", "Records the database refused (each logged "
                                     "with its device; the rest of its batch was written)")
        failed.add_metric([], float(c.counters.write_failures))
        rows = CounterMetricFamily("lepton_telemetry_rows_written", "Telemetry records written to the database")
        rows.add_metric([], float(c.counters.telemetry_rows))
        duplicates = CounterMetricFamily("lepton_telemetry_duplicates", "Telemetry records already in the database "
                                         "(a resend, a takeover between replicas): not written again")
        duplicates.add_metric([], float(c.counters.telemetry_duplicates))
        peers = CounterMetricFamily("lepton_messages_for_peers", "Messages of devices another controller replica "
                                    "owns: dropped here after reading the topic")
        peers.add_metric([], float(c.counters.messages_for_peers))
        health = c.health()
        replicas = GaugeMetricFamily("lepton_controller_replicas", "Controller replicas alive on this database "
                                     "(this one included)")
        replicas.add_metric([], float(len(health.get("replicas") or ())))
        connected = GaugeMetricFamily("lepton_broker_connected", "1 while the controller is connected to the broker")
        connected.add_metric([], 1.0 if health.get("broker_connected") else 0.0)
        backlog = GaugeMetricFamily("lepton_ingest_backlog", "Records received but not yet written")
        backlog.add_metric([], float(health.get("ingest_backlog") or 0))
        jobs = GaugeMetricFamily("lepton_ota_active_jobs", "OTA jobs not finished yet")
        jobs.add_metric([], float(health.get("active_jobs") or 0))
        yield from (bytes_served, blocks_served, ingested, rejected, failed, rows, duplicates, peers, connected,
                    backlog, jobs, replicas)


def device_metrics(devices: Iterable[dict[str, Any]], fleet: str) -> Iterator[Metric]:
    """Per device, from ``controller.devices()`` rows."""
    def gauge(name: str, text: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=DEVICE_LABELS)

    up = gauge("lepton_device_up", "1 when the device's last status said online")
    seen = gauge("lepton_device_last_seen_seconds", "When the controller last heard from the device (unix time)")
    telemetry_at = gauge("lepton_device_telemetry_seconds", "When its latest telemetry arrived (unix time)")
    model = InfoMetricFamily("lepton_device_model", "The model the device serves",
                             labels=(*DEVICE_LABELS, "name", "version", "sha256"))
    budget = gauge("lepton_device_latency_budget_seconds",
                   "The served model's latency budget (its manifest's self-test or the agent's [health])")
    inferences = CounterMetricFamily("lepton_device_inferences", "Inferences the device ran (its own count)",
                                     labels=DEVICE_LABELS)
    errors = CounterMetricFamily("lepton_device_errors", "Inferences that failed on the device (its own count)",
                                 labels=DEVICE_LABELS)
    p50 = gauge("lepton_device_latency_p50_seconds", "Median inference latency over the device's recent window")
    p99 = gauge("lepton_device_latency_p99_seconds", "99th percentile inference latency over its recent window")
    memory = gauge("lepton_device_memory_bytes", "Resident memory of the device's agent process")
    arena = gauge("lepton_device_arena_bytes", "The interpreter's tensor arena (TFLite Micro)")
    arena_used = GaugeMetricFamily("lepton_device_arena_used_bytes",
                                   "High-water mark of a microcontroller's arena, head and tail",
                                   labels=(*DEVICE_LABELS, "part"))
    fields = ((inferences, "inferences", _number), (errors, "errors", _number), (p50, "latency_p50_ms", _ms),
              (p99, "latency_p99_ms", _ms), (memory, "rss_bytes", _number), (arena, "arena_bytes", _number))
    for d in devices:
        labels = [d["device"], fleet, d.get("profile") or ""]
        online = bool(d.get("online"))
        up.add_metric(labels, 1.0 if online else 0.0)
        if d.get("last_seen") is not None:
            seen.add_metric(labels, float(d["last_seen"]))
        if d.get("telemetry_at") is not None:
            telemetry_at.add_metric(labels, float(d["telemetry_at"]))
        served = d.get("model")
        if served:
            model.add_metric(labels, {"name": str(served.get("name")), "version": str(served.get("version")),
                                      "sha256": str(served.get("sha256"))})
        limit = _ms(d, "latency_budget_ms")
        if limit is not None:
            budget.add_metric(labels, limit)
        values = d.get("telemetry")
        if not online or not isinstance(values, dict):
            continue
        for family, key, read in fields:
            value = read(values, key)
            if value is not None:
                family.add_metric(labels, value)
        for part in ("head", "tail"):
            value = _number(values, f"arena_{part}_bytes")
            if value is not None:
                arena_used.add_metric([*labels, part], value)
    yield from (up, seen, telemetry_at, model, budget, inferences, errors, p50, p99, memory, arena, arena_used)


def rollout_metrics(rollouts: Iterable[dict[str, Any]]) -> Iterator[Metric]:
    """Per rollout, from rollout JSON with its devices (docs/ROLLOUTS.md)."""
    devices = GaugeMetricFamily("lepton_rollout_devices", "Devices of a rollout per phase",
                                labels=(*ROLLOUT_LABELS, "phase"))
    state = GaugeMetricFamily("lepton_rollout_state", "1 for the state the rollout is in, 0 for the others",
                              labels=(*ROLLOUT_LABELS, "state"))
    updated = GaugeMetricFamily("lepton_rollout_updated_seconds", "When the rollout last changed (unix time)",
                                labels=ROLLOUT_LABELS)
    abort = InfoMetricFamily("lepton_rollout_abort", "Why the rollout aborted (the criterion is the flag's name)",
                             labels=(*ROLLOUT_LABELS, "criterion"))
    for r in rollouts:  # every phase and state, 0 when none: a query or an alert sees a change from 0
        labels = [str(r.get("rollout")), str(r.get("name")), str(r.get("version"))]
        phases = Counter(str(dev.get("phase")) for dev in r.get("devices") or ())
        for phase in (*PHASES, *sorted(set(phases) - set(PHASES))):
            devices.add_metric([*labels, phase], float(phases.get(phase, 0)))
        current = str(r.get("state"))
        for name in (*STATES, *(() if current in STATES else (current,))):
            state.add_metric([*labels, name], 1.0 if name == current else 0.0)
        if isinstance(r.get("updated"), (int, float)):
            updated.add_metric(labels, float(r["updated"]))
        reason = r.get("abort")
        if isinstance(reason, dict):
            abort.add_metric(labels, {"criterion": str(reason.get("criterion"))})
    yield from (devices, state, updated, abort)
