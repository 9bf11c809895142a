"""Benchmark OTA delivery and telemetry ingest over real Mosquitto on loopback.

    .venv/bin/python bench/ota.py [--json] [--skip-delivery] [--skip-ingest] [--devices 100,1000]

Part 1, delivery: the controller (this process) sends a signed artifact of 100 KB, 1 MB and 4 MB to a
simulated device (``lepton_edge.tools.devsim``, its own process, the real protocol: job, verification
of the signature, blocks requested on ota/get with 4 in flight, sha256, activation). Time runs from
the deployment's creation to the device's ``healthy`` on ota/progress. Then the same to the real agent
(MLPerf's 1.07 MB AD model, A/B store and health check) and to a simulated microcontroller behind the
serial gateway (MLPerf's KWS int8, flashed at 115 200 and 921 600 baud).

Part 2, telemetry ingest: 100 and 1000 simulated devices spread over several processes (paho's
select() loop cannot hold >1024 sockets; ours can, but one Python process is one core) publish at
QoS 1 into a controller that writes SQLite in batches. Two loads: steady (one message per device per
second) and a burst (each device publishes N at once). The broker is configured for it:
``max_queued_messages`` raised from 1000 (beyond it Mosquitto drops QoS 1 messages for a slow
subscriber) and ``max_inflight_messages`` 100. ``--default-broker`` repeats the burst with
Mosquitto's defaults to show the losses it would have.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from lepton_edge.artifact import generate_keypair, load_private_key, write_artifact_files  # noqa: E402
from lepton_edge.console import print_json, render_table  # noqa: E402
from lepton_edge.fleet.controller import Controller, ControllerOptions  # noqa: E402
from lepton_edge.fsio import atomic_directory  # noqa: E402
from lepton_edge.mqtt import (  # noqa: E402
    DeviceTopics,
    MqttClient,
    Progress,
    SessionOptions,
    parse_broker_url,
)
from lepton_edge.tools.mosquitto import Broker  # noqa: E402  (a broker on a free port with its own config)

# Mosquitto's defaults drop QoS 1 messages past 1000 queued for a client, and leave Nagle's algorithm on
# for its client sockets (set_tcp_nodelay false): a block then often waits ~40 ms for a delayed ACK,
# and 1 MB takes ~0.15 s instead of ~0.02 s. Our clients set TCP_NODELAY on their own sockets.
TUNED = {"max_queued_messages": 1_000_000, "max_inflight_messages": 100, "extra": "set_tcp_nodelay true\n"}


def make_artifact(out: Path, size: int, key) -> Path:
    manifest = {"name": "bench", "version": 1, "profile": "linux-sbc", "runtime": "litert", "kernel_library": "-",
                "inputs": [], "outputs": [], "layout": "NHWC", "arena": {}, "conversion": {}}
    with atomic_directory(out) as staging:
        write_artifact_files(staging, os.urandom(size), manifest, key)
    return out


def controller_for(tmp: Path, broker: Broker) -> Controller:
    session = SessionOptions(clean_start=False, session_expiry_s=600, max_inflight=1000, min_backoff_s=0.1)
    c = Controller(parse_broker_url(broker.url()), tmp / "store", None,
                   ControllerOptions(session=session, housekeeping_s=0.2))
    c.start()
    if not c.wait_connected(10):
        raise SystemExit(f"controller could not connect: {c.mqtt.last_error}")
    return c


def devsim(broker: Broker, count: int, start: int, prefix: str, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "lepton_edge.tools.devsim", "--broker", broker.url(),
                             "--count", str(count), "--start", str(start), "--prefix", prefix, "--control", *extra],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc


def read_event(proc: subprocess.Popen, want: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"devsim exited with {proc.wait()}")
        event = json.loads(line)
        if event["event"] == want:
            return event
        if event["event"] == "error":
            raise SystemExit(f"devsim: {event['message']}")
    raise SystemExit(f"devsim: no {want} within {timeout} s")


def send(proc: subprocess.Popen, command: str) -> None:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()


# --- part 1 -------------------------------------------------------------------------------------

def bench_delivery(tmp: Path, sizes: list[int], runs: int, broker_conf: dict, label: str) -> list[dict]:
    priv_path, pub_path = generate_keypair(tmp / "keys")
    key = load_private_key(priv_path)
    records = []
    with Broker(tmp, **broker_conf) as broker:
        controller = controller_for(tmp, broker)
        healthy: dict[str, float] = {}
        done = threading.Event()
        watcher = MqttClient(parse_broker_url(broker.url()), "bench-watch")

        def on_progress(topic: str, payload: bytes) -> None:
            p = Progress.from_bytes(payload)
            if p.state in ("healthy", "failed", "rolled_back"):
                healthy[p.job] = time.perf_counter() if p.state == "healthy" else -1.0
                done.set()
        watcher.subscribe(DeviceTopics("default", "ota-0000").ota_progress, on_progress)
        watcher.start()
        watcher.wait_connected(10)
        proc = devsim(broker, 1, 0, "ota-", "--trusted-key", str(pub_path))
        read_event(proc, "ready")
        while not controller.is_online("ota-0000"):
            time.sleep(0.01)
        try:
            for size in sizes:
                times = []
                for run in range(runs):
                    art = make_artifact(tmp / f"art-{size}-{run}", size, key)
                    stored = controller.upload_artifact((art / "manifest.json").read_bytes(),
                                                        (art / "manifest.sig").read_bytes(),
                                                        (art / "model.tflite").read_bytes())
                    done.clear()
                    started = time.perf_counter()
                    dep = controller.create_deployment(stored["artifact"], ["ota-0000"])
                    job = dep["devices"][0]["job"]
                    deadline = time.monotonic() + 60
                    while job not in healthy and time.monotonic() < deadline:
                        done.wait(1)
                        done.clear()
                    if healthy.get(job, -1) < 0:
                        raise SystemExit(f"delivery of {size} bytes failed: {controller.job(job)}")
                    times.append(healthy[job] - started)
                best, med = min(times), statistics.median(times)
                records.append({"broker": label, "size_bytes": size, "runs": runs, "median_s": round(med, 4),
                                "best_s": round(best, 4),
                                "median_mb_s": round(size / med / 1e6, 2)})
        finally:
            send(proc, "stop")
            proc.wait(30)
            watcher.stop()
            controller.stop()
    return records


def time_deployments(controller: Controller, device: str, artifacts: list[Path], timeout: float = 120) -> list[float]:
    """Deploy each artifact in turn; seconds from the deployment's creation to ``healthy``."""
    times = []
    for art in artifacts:
        stored = controller.upload_artifact((art / "manifest.json").read_bytes(), (art / "manifest.sig").read_bytes(),
                                            (art / "model.tflite").read_bytes())
        started = time.perf_counter()
        dep = controller.create_deployment(stored["artifact"], [device])
        job = dep["devices"][0]["job"]
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = controller.job(job).get("state")
            if state in ("healthy", "failed", "rolled_back"):
                break
            time.sleep(0.005)
        if state != "healthy":
            raise SystemExit(f"delivery to {device} failed: {controller.job(job)}")
        times.append(time.perf_counter() - started)
    return times


def bench_gateway_delivery(tmp: Path, runs: int, broker_conf: dict, baud: int) -> list[dict]:
    """A simulated microcontroller (``device-sim``, its own process, a pseudo-terminal limited to ``baud``)
    behind the gateway (this process) receiving MLPerf's KWS int8 model: job verified, blocks into the
    gateway's store, flashed over serial, sha256 and self-test on the device, health check, healthy."""
    from agent_helpers import build_artifact, write_config
    from conftest import MLPERF_INT8
    from firmware_bridge.link import PortOptions
    from lepton_edge.agent.config import load_config
    from lepton_edge.agent.mqtt_link import LinkOptions, start_mqtt
    from lepton_edge.gateway.daemon import Gateway

    model = MLPERF_INT8["kws"]
    if not model.exists():
        return []
    profile = "arduino-nano-33-ble"
    priv_path, pub_path = generate_keypair(tmp / "keys")
    key = load_private_key(priv_path)
    sim = subprocess.Popen([sys.executable, "-m", "lepton_edge", "device-sim", "--profile", profile, "--print-port",
                            "--baud", str(baud), "--state-dir", str(tmp / "sim")], stdout=subprocess.PIPE, text=True)
    try:
        port = sim.stdout.readline().strip()
        with Broker(tmp, **broker_conf) as broker:
            controller = controller_for(tmp, broker)
            config = write_config(tmp / "gateway.toml", store=tmp / "store", trusted_keys=[pub_path],
                                  device_id="mcu-0000", fleet="default", profile=profile, backend="tflm",
                                  extra=f'\n[mqtt]\nbroker = "{broker.url()}"\n')
            gateway = Gateway(load_config(config), PortOptions(port, baud))
            gateway.start()
            gateway.mqtt = start_mqtt(gateway, LinkOptions(telemetry_interval_s=5.0))
            try:
                while not controller.is_online("mcu-0000"):
                    time.sleep(0.01)
                arts = [build_artifact(tmp / f"kws-{run}", model, version=run + 1, private_key=key, profile=profile)
                        for run in range(runs)]
                size = (arts[0] / "model.tflite").stat().st_size
                times = time_deployments(controller, "mcu-0000", arts)
            finally:
                gateway.stop()
                controller.stop()
    finally:
        sim.terminate()
        sim.wait(10)
    med = statistics.median(times)
    return [{"broker": f"tuned, gateway, serial {baud:,} baud", "size_bytes": size, "runs": runs,
             "median_s": round(med, 4), "best_s": round(min(times), 4), "median_mb_s": round(size / med / 1e6, 3)}]


def bench_agent_delivery(tmp: Path, runs: int, broker_conf: dict) -> list[dict]:
    """The real agent (in this process, LiteRT) receiving MLPerf's 1.07 MB float anomaly-detection model:
    deployment created -> job verified, blocks fetched into the inactive slot, sha256, health check, healthy."""
    from agent_helpers import build_artifact, write_config
    from conftest import MLPERF_FLOAT
    from lepton_edge.agent.config import load_config
    from lepton_edge.agent.daemon import Agent
    from lepton_edge.agent.mqtt_link import LinkOptions, start_mqtt

    model = MLPERF_FLOAT["ad"]
    if not model.exists():
        return []
    priv_path, pub_path = generate_keypair(tmp / "keys")
    key = load_private_key(priv_path)
    records = []
    with Broker(tmp, **broker_conf) as broker:
        controller = controller_for(tmp, broker)
        extra = f'\n[mqtt]\nbroker = "{broker.url()}"\n'
        config = write_config(tmp / "agent.toml", store=tmp / "store", trusted_keys=[pub_path],
                              device_id="agent-0000", fleet="default", extra=extra)  # the controller's fleet
        agent = Agent(load_config(config))
        agent.start()
        link = start_mqtt(agent, LinkOptions(telemetry_interval_s=5.0))
        try:
            while not controller.is_online("agent-0000"):
                time.sleep(0.01)
            arts = [build_artifact(tmp / f"ad-{run}", model, version=run + 1, private_key=key) for run in range(runs)]
            size = (arts[0] / "model.tflite").stat().st_size
            times = time_deployments(controller, "agent-0000", arts)
            med = statistics.median(times)
            records.append({"broker": "tuned, real agent", "size_bytes": size, "runs": runs,
                            "median_s": round(med, 4), "best_s": round(min(times), 4),
                            "median_mb_s": round(size / med / 1e6, 2)})
        finally:
            link.stop()
            agent.stop()
            controller.stop()
    return records


# --- part 2 -------------------------------------------------------------------------------------

def bench_ingest(tmp: Path, devices: int, processes: int, broker_conf: dict, load: str, steady_s: float,
                 burst: int, label: str) -> dict:
    """One load against a fresh broker and controller. ``load`` is "steady" (1 message per device per
    second for ``steady_s``) or "burst" (``burst`` messages per device at once)."""
    with Broker(tmp, **broker_conf) as broker:
        controller = controller_for(tmp, broker)
        per = math.ceil(devices / processes)
        procs = []
        try:
            started = time.perf_counter()
            interval = "1" if load == "steady" else "0"
            for i in range(processes):
                n = min(per, devices - i * per)
                procs.append(devsim(broker, n, i * per, "tel-", "--telemetry-interval", interval))
            for p in procs:
                read_event(p, "ready")
            connect_s = time.perf_counter() - started
            t0 = time.perf_counter()
            wall0 = time.time()
            if load == "steady":
                time.sleep(steady_s)
                wall1 = time.time()
                sent, dropped = _stop(procs)
                procs = []
            else:
                for p in procs:
                    send(p, f"burst {burst}")
                sent, dropped = devices * burst, 0
            got, last = _wait_rows(controller, sent)
            if procs:
                _, dropped = _stop(procs)
                procs = []
            db = controller.db
            lat = sorted(r[0] * 1000 for r in db._conn().execute("SELECT received - ts FROM telemetry"))
            dups = db._conn().execute(
                "SELECT COUNT(*) - COUNT(DISTINCT device || ':' || seq) FROM telemetry").fetchone()[0]
            if load == "steady":  # rows that arrived within the window, per second
                in_window = db._conn().execute("SELECT COUNT(*) FROM telemetry WHERE received BETWEEN ? AND ?",
                                               (wall0, wall1)).fetchone()[0]
                rate = in_window / steady_s
            else:
                rate = got / max(1e-9, last - t0)
        finally:
            for p in procs:
                send(p, "stop")
                p.wait(60)
            controller.stop()
    return {"broker": label, "devices": devices, "processes": processes,
            "load": f"steady 1/s, {steady_s:g} s" if load == "steady" else f"burst {burst}/device",
            "sent": sent, "received": got, "lost": max(0, sent - got), "duplicates": dups, "dropped_by_client": dropped,
            "ingest_msg_s": round(rate, 1),
            "latency_p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
            "latency_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2) if lat else None,
            "connect_all_s": round(connect_s, 2)}


def _stop(procs) -> tuple[int, int]:
    """Stop the simulators cleanly; (telemetry sent, dropped by their clients)."""
    sent = dropped = 0
    for p in procs:
        send(p, "stop")
    for p in procs:
        event = read_event(p, "stopped")
        sent += event["telemetry_sent"]
        dropped += event["dropped"]
        p.wait(60)
    return sent, dropped


def _wait_rows(controller: Controller, expected: int, stall_s: float = 5.0) -> tuple[int, float]:
    """Wait until ``expected`` rows are in SQLite or nothing new arrived for ``stall_s``;
    returns (rows, when the last one landed)."""
    last, last_change = -1, time.perf_counter()
    while True:
        got = controller.db.telemetry_count()
        now = time.perf_counter()
        if got != last:
            last, last_change = got, now
        if got >= expected or now - last_change > stall_s:
            return got, last_change
        time.sleep(0.02)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--skip-delivery", action="store_true")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--devices", default="100,1000")
    ap.add_argument("--processes", type=int, default=0, help="simulator processes (default: 1 per 250 devices)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steady", type=float, default=10.0, metavar="S")
    ap.add_argument("--burst", type=int, default=20, metavar="N")
    ap.add_argument("--default-broker", action="store_true",
                    help="also run delivery and the bursts against Mosquitto's defaults")
    args = ap.parse_args()
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="lepton-bench-ota-") as tmp:
        tmp_path = Path(tmp)
        if not args.skip_delivery:
            result["delivery"] = bench_delivery(tmp_path / "delivery", [100_000, 1_000_000, 4_000_000], args.runs,
                                                TUNED, "tuned")
            result["delivery"] += bench_agent_delivery(tmp_path / "agent-delivery", args.runs, TUNED)
            for baud in (115_200, 921_600):
                result["delivery"] += bench_gateway_delivery(tmp_path / f"gateway-{baud}", args.runs, TUNED, baud)
            if args.default_broker:
                result["delivery"] += bench_delivery(tmp_path / "delivery-default", [100_000, 1_000_000, 4_000_000],
                                                     args.runs, {}, "defaults")
        if not args.skip_ingest:
            result["ingest"] = []
            for n in (int(x) for x in args.devices.split(",")):
                procs = args.processes or max(1, math.ceil(n / 250))
                result["ingest"].append(bench_ingest(tmp_path / f"steady-{n}", n, procs, TUNED, "steady",
                                                     args.steady, 0, "tuned"))
                if args.burst > 0:
                    result["ingest"].append(bench_ingest(tmp_path / f"burst-{n}", n, procs, TUNED, "burst", 0,
                                                         args.burst, "tuned"))
                if args.default_broker and args.burst > 0:
                    result["ingest"].append(bench_ingest(tmp_path / f"default-{n}", n, procs, {}, "burst", 0,
                                                         args.burst, "defaults"))
    if args.json:
        print_json(result)
        return 0
    if "delivery" in result:
        print("OTA delivery (controller -> simulated device, the real agent, or a simulated microcontroller behind "
              "the gateway; loopback; deployment created -> healthy)")
        print(render_table(("broker", "artifact", "runs", "median s", "best s", "MB/s"),
                           [(r["broker"], f"{r['size_bytes'] / 1e6:.3g} MB", r["runs"], f"{r['median_s']:.3f}",
                             f"{r['best_s']:.3f}",
                             f"{r['median_mb_s']:.3g}") for r in result["delivery"]]))
        print()
    if "ingest" in result:
        print("Telemetry ingest (QoS 1, simulated devices -> Mosquitto -> controller -> SQLite)")
        print(render_table(("broker", "devices", "procs", "load", "sent", "received", "lost", "dups", "msg/s",
                            "p50 ms", "p99 ms", "connect s"),
                           [(r["broker"], r["devices"], r["processes"], r["load"], r["sent"], r["received"], r["lost"],
                             r["duplicates"], r["ingest_msg_s"], r["latency_p50_ms"], r["latency_p99_ms"],
                             r["connect_all_s"]) for r in result["ingest"]], align="lrrlrrrrrrrr"))
        print("latency: device timestamp to controller receipt (one clock); msg/s: steady = rows that arrived "
              "within the window / window, burst = rows / time to the last row; sent includes the connect phase")
    failed = [r for r in result.get("ingest", []) if r["broker"] == "tuned" and r["lost"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
