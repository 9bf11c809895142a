"""Benchmark the controller's GET /metrics: scrape time and size for a fleet of 1,000 devices.

    .venv/bin/python bench/fleet.py [--json] [--devices 100,1000] [--scrapes 50]

For each fleet size, a fresh Mosquitto and controller (this process, with its HTTP API on loopback);
one MQTT client publishes every device's status (online, model, profile, latency budget) and one
telemetry message (counts, latency p50/p99, memory; every tenth device is a microcontroller behind a
gateway, with its arena's head and tail) at QoS 1; once all of it is in SQLite, ``--scrapes`` scrapes
of /metrics over one keep-alive connection, as Prometheus does, after one warm-up scrape. Scrape time
is the client's, from request to the last byte; "collect ms" is the controller's own
``lepton_scrape_duration_seconds`` (reading the devices and building the families) from the last scrape.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lepton_edge.console import print_json, render_table  # noqa: E402
from lepton_edge.fleet.controller import Controller, ControllerOptions  # noqa: E402
from lepton_edge.fleet.http_api import HttpApi, HttpListen  # noqa: E402
from lepton_edge.mqtt import (  # noqa: E402
    DeviceTopics,
    ModelInfo,
    MqttClient,
    SessionOptions,
    Status,
    Telemetry,
    parse_broker_url,
)
from lepton_edge.tools.mosquitto import Broker  # noqa: E402

FLEET = "bench"
TUNED = {"max_queued_messages": 1_000_000, "max_inflight_messages": 100}


def device_messages(i: int) -> tuple[str, bytes, str, bytes]:
    """(status topic, status, telemetry topic, telemetry) of simulated device ``i``."""
    topics = DeviceTopics(FLEET, f"sim-{i:05d}")
    mcu = i % 10 == 9
    model = ModelInfo("kws", 1 + i % 3, f"{i % 3:02x}" * 32, "a" if i % 2 else "b")
    status = Status(True, model, "bench", time.time(), tags=(f"site:s{i % 7}", "hw:pi4"),
                    profile="arduino-nano-33-ble" if mcu else "linux-sbc", latency_budget_ms=250.0 if mcu else 20.0)
    values: dict = {"uptime_s": 3600.0 + i, "inferences": 10_000 + 37 * i, "errors": i % 5,
                    "latency_p50_ms": 5.0 + i % 11 / 10, "latency_p99_ms": 9.0 + i % 17 / 10}
    if mcu:
        values.update(arena_bytes=65536, arena_head_bytes=40_000 + i, arena_tail_bytes=9000, device_uptime_s=3600.0)
    else:
        values.update(rss_bytes=48_000_000 + 4096 * i, cpu_percent=12.5)
    return topics.status, status.to_bytes(), topics.telemetry, Telemetry(0, time.time(), values).to_bytes()


def ingest(broker: Broker, controller: Controller, devices: int, timeout: float = 120.0) -> float:
    """Publish every device's status and telemetry; seconds until all of it is in SQLite."""
    started = time.perf_counter()
    publisher = MqttClient(parse_broker_url(broker.url()), "bench-fleet-publisher",
                           session=SessionOptions(max_inflight=1000, max_queued=10 * devices + 1000))
    publisher.start()
    if not publisher.wait_connected(10):
        raise SystemExit(f"publisher could not connect: {publisher.last_error}")
    try:
        for i in range(devices):
            status_topic, status, telemetry_topic, telemetry = device_messages(i)
            publisher.publish(status_topic, status, qos=1)
            publisher.publish(telemetry_topic, telemetry, qos=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(controller.router.messages.values()) >= 2 * devices and controller.wait_idle(timeout):
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"only {sum(controller.router.messages.values())} of {2 * devices} messages arrived")
    finally:
        publisher.stop()
    known = len(controller.devices())
    if known != devices:
        raise SystemExit(f"the controller knows {known} devices, not {devices}")
    return time.perf_counter() - started


def time_scrapes(url: str, scrapes: int) -> tuple[list[float], bytes]:
    """Seconds per GET /metrics over one keep-alive connection, and the last body."""
    conn = http.client.HTTPConnection(url.split("://", 1)[1], timeout=60)
    times, body = [], b""
    try:
        for n in range(scrapes + 1):
            started = time.perf_counter()
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            elapsed = time.perf_counter() - started
            if resp.status != 200:
                raise SystemExit(f"GET /metrics: {resp.status} {body[:200]!r}")
            if n:  # the first one warms up
                times.append(elapsed)
    finally:
        conn.close()
    return times, body


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_scrape(tmp: Path, devices: int, scrapes: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with Broker(tmp, **TUNED) as broker:
        session = SessionOptions(clean_start=False, session_expiry_s=600, max_inflight=1000, min_backoff_s=0.1)
        controller = Controller(parse_broker_url(broker.url()), tmp / "store", None,
                                ControllerOptions(fleet=FLEET, session=session, housekeeping_s=0.2))
        controller.start()
        api = None
        try:
            if not controller.wait_connected(10):
                raise SystemExit(f"controller could not connect: {controller.mqtt.last_error}")
            api = HttpApi(controller, HttpListen("127.0.0.1", 0), None)
            api.start()
            ingest_s = ingest(broker, controller, devices)
            times, body = time_scrapes(api.url, scrapes)
        finally:
            if api is not None:
                api.stop()
            controller.stop()
    families = list(text_string_to_metric_families(body.decode()))
    series = sum(len(f.samples) for f in families)
    up = sum(s.value for f in families if f.name == "lepton_device_up" for s in f.samples)
    if up != devices:
        raise SystemExit(f"/metrics shows {up:g} devices up, not {devices}")
    collect = next(s.value for f in families if f.name == "lepton_scrape_duration_seconds" for s in f.samples)
    ms = [t * 1000 for t in times]
    return {"devices": devices, "scrapes": scrapes, "series": series, "bytes": len(body),
            "scrape_p50_ms": round(statistics.median(ms), 2), "scrape_p95_ms": round(percentile(ms, 0.95), 2),
            "scrape_max_ms": round(max(ms), 2), "collect_ms": round(collect * 1000, 2),
            "ingest_s": round(ingest_s, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--devices", default="100,1000", help="fleet sizes, comma-separated (default 100,1000)")
    ap.add_argument("--scrapes", type=int, default=50, help="timed scrapes per fleet size (default 50)")
    args = ap.parse_args()
    try:
        sizes = [int(x) for x in args.devices.split(",")]
    except ValueError:
        ap.error(f"--devices {args.devices!r}: comma-separated numbers of devices")
    if any(n < 1 or n > 100_000 for n in sizes) or args.scrapes < 1:
        ap.error("--devices: 1 to 100000 each; --scrapes: at least 1")
    results = []
    with tempfile.TemporaryDirectory(prefix="lepton-bench-fleet-") as tmp:
        for n in sizes:
            results.append(bench_scrape(Path(tmp) / f"fleet-{n}", n, args.scrapes))
    if args.json:
        print_json({"metrics": results})
        return 0
    print(f"GET /metrics (the controller's HTTP API on loopback; {args.scrapes} scrapes over one keep-alive "
          "connection after a warm-up)")
    print(render_table(("devices", "series", "/metrics bytes", "scrape p50 ms", "scrape p95 ms", "max ms",
                        "collect ms", "ingest s"),
                       [(r["devices"], r["series"], f"{r['bytes']:,}", f"{r['scrape_p50_ms']:.1f}",
                         f"{r['scrape_p95_ms']:.1f}", f"{r['scrape_max_ms']:.1f}", f"{r['collect_ms']:.1f}",
                         f"{r['ingest_s']:.2f}") for r in results]))
    print("scrape: request to last byte at the client; collect: the controller's lepton_scrape_duration_seconds "
          "(last scrape); ingest: every device's status and telemetry published until all of it was in SQLite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
