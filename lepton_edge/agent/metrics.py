"""The agent's counters: Prometheus metrics (its own registry, never the global one) and a latency window.

``/metrics`` renders the registry; ``/v1/status`` reads the inference count and the p50/p99 of the
last :data:`WINDOW` inference latencies (interpreter time, milliseconds).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest

WINDOW = 4096
_LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5)

#: What :meth:`AgentMetrics.render` writes: generate_latest's text format 0.0.4 (names escaped to underscores).
#: Not prometheus_client's CONTENT_TYPE_LATEST, which says version=1.0.0 since prometheus_client 0.22.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._window: deque[float] = deque(maxlen=WINDOW)
        self.inference_count = 0
        self.error_count = 0
        r = self.registry
        self._inferences = Counter("lepton_agent_inferences", "Inferences run through the local API", registry=r)
        self._latency = Histogram("lepton_agent_inference_latency_seconds", "Interpreter time per inference",
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self._requests = Counter("lepton_agent_http_requests", "HTTP requests answered", ["route", "code"], registry=r)
        self._request_children: dict[tuple[str, int], Any] = {}
        self._activations = Counter("lepton_agent_activations", "Model activations by outcome", ["result"], registry=r)
        self._model = Gauge("lepton_agent_model_info", "The model being served (value 1)",
                            ["name", "version", "sha256", "slot", "backend"], registry=r)
        self._arena = Gauge("lepton_agent_arena_bytes", "Arena of the TFLite Micro runner (0 on LiteRT)", registry=r)
        uptime = Gauge("lepton_agent_uptime_seconds", "Seconds since the agent started", registry=r)
        uptime.set_function(self.uptime_s)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open fds

    def uptime_s(self) -> float:
        return time.monotonic() - self.started

    def observe_inference(self, latency_ms: float) -> None:
        with self._lock:
            self.inference_count += 1
            self._window.append(latency_ms)
        self._inferences.inc()
        self._latency.observe(latency_ms / 1000.0)

    def observe_error(self) -> None:
        with self._lock:
            self.error_count += 1

    def count_request(self, route: str, code: int) -> None:
        child = self._request_children.get((route, code))
        if child is None:  # labels() is slow-ish; a handful of (route, code) pairs ever occur
            child = self._request_children.setdefault((route, code), self._requests.labels(route, str(code)))
        child.inc()

    def count_activation(self, result: str) -> None:
        self._activations.labels(result).inc()

    def set_model(self, name: str, version: int, sha256: str, slot: str, backend: str, arena_bytes: int | None) -> None:
        self._model.clear()
        self._model.labels(name, str(version), sha256, slot, backend).set(1)
        self._arena.set(arena_bytes or 0)

    def clear_model(self) -> None:
        self._model.clear()
        self._arena.set(0)

    def latency_percentiles(self) -> dict[str, float | int | None]:
        with self._lock:
            window = np.fromiter(self._window, dtype=np.float64, count=len(self._window))
        if not window.size:
            return {"p50": None, "p99": None, "max": None, "samples": 0}
        p50, p99 = np.percentile(window, [50, 99])
        return {"p50": round(float(p50), 4), "p99": round(float(p99), 4), "max": round(float(window.max()), 4),
                "samples": int(window.size)}

    def render(self) -> bytes:
        return generate_latest(self.registry)

