"""Benchmark the fleet at scale: simulated devices' telemetry into the controller's database, and a rollout.

    .venv/bin/python bench/scale.py [--json] [--devices 1000,10000] [--window 60] [--quick]

Set-up "one controller on SQLite with one Mosquitto": for each fleet size, a fresh private Mosquitto
(bench/fleet.py's queue limits, so that the broker itself drops nothing), ``lepton-edge fleet serve`` as
a subprocess (SQLite in its store) and ``lepton-edge fleet simulate`` (``--processes auto``: one process
per 800 devices), every device sending QoS 1 telemetry every ``--interval`` seconds. Once every device
is connected, a measured window of ``--window`` seconds: telemetry rows added to the controller's
database per second (ingest rate, beside the offered rate devices/interval) and the controller's CPU
time from /proc/<pid>/stat (% of one core). With 1,000 devices or more, a 1 MB model is then deployed
(a plain deployment, every block over MQTT) to 1,000 of them while their telemetry goes on: seconds
until every job is over. Then the simulator stops (devices report what they sent and what the broker
acknowledged) and, once the database stops growing, "lost at QoS 1" is the devices' sent count minus
the distinct (device, seq) rows stored. Everything runs on this machine (the simulator, the broker and
the controller share its cores). The second set-up of issue 13 (two controller replicas on PostgreSQL
with three NATS nodes) is printed as not measured: replicas are not built yet.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lepton_edge.console import print_json, render_table  # noqa: E402
from lepton_edge.tools.devsim.artifact import sim_artifact  # noqa: E402
from lepton_edge.tools.devsim.limits import raise_open_files  # noqa: E402
from lepton_edge.tools.mosquitto import Broker  # noqa: E402

FLEET = "scale"
TUNED = {"max_queued_messages": 1_000_000, "max_inflight_messages": 100}
SETUP_1 = "one controller on SQLite with one Mosquitto"
SETUP_2 = "two replicas on PostgreSQL with three NATS nodes"
ROLLOUT_DEVICES, MODEL_BYTES = 1000, 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Simulator:
    """``fleet simulate --json`` as a subprocess; its latest progress and its summary."""

    def __init__(self, broker_url: str, devices: int, interval: float, prefix: str, log: IO[str]) -> None:
        self.devices = devices
        self.progress: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lepton_edge", "fleet", "simulate", "--broker", broker_url, "--fleet", FLEET,
             "--devices", str(devices), "--telemetry-interval", str(interval), "--id-prefix", prefix, "--json"],
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "progress":
                self.progress = event
            elif event.get("event") == "summary":
                self.summary = event

    @property
    def connected(self) -> int:
        return int(self.progress.get("connected", 0))

    def wait_connected(self, timeout: float) -> float:
        started = time.monotonic()
        while self.connected < self.devices:
            if self.proc.poll() is not None:
                raise SystemExit(f"fleet simulate exited with {self.proc.returncode}")
            if time.monotonic() - started > timeout:
                raise SystemExit(f"only {self.connected} of {self.devices} devices connected within {timeout:.0f} s")
            time.sleep(0.2)
        return time.monotonic() - started

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(180)
        self._reader.join(10)
        if self.summary is None:
            raise SystemExit(f"fleet simulate gave no summary (exit {self.proc.returncode})")
        return self.summary


class Controller:
    """``fleet serve`` as a subprocess on a fresh store; its HTTP API URL."""

    def __init__(self, broker_url: str, store: Path, log: IO[str]) -> None:
        self.db = store / "fleet.db"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lepton_edge", "fleet", "serve", "--broker", broker_url, "--fleet", FLEET,
             "--store", str(store), "--http", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("fleet controller: "):
            raise SystemExit(f"fleet serve did not start: {line!r}")
        self.url = line.split()[2]

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rows(self) -> tuple[int, int]:
        """Telemetry rows in the database, and distinct (device, seq) among them."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as db:
            total, distinct = db.execute(
                "SELECT COUNT(*), (SELECT COUNT(*) FROM (SELECT DISTINCT device, seq FROM telemetry)) "
                "FROM telemetry").fetchone()
        return int(total), int(distinct)

    def settle(self, quiet_s: float = 3.0, timeout: float = 120.0) -> tuple[int, int]:
        """The rows once the count has not changed for ``quiet_s`` (the controller has drained its queue)."""
        deadline = time.monotonic() + timeout
        last, since = self.rows(), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
            time.sleep(0.5)
            now = self.rows()
            if now != last:
                last, since = now, time.monotonic()
        return last

    def api(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPConnection(self.url.split("://", 1)[1], timeout=120)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"null")
        finally:
            conn.close()
        if resp.status >= 300:
            raise SystemExit(f"{method} {path}: {resp.status} {data}")
        return data

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def rollout(controller: Controller, art: Path, devices: list[str], timeout: float) -> dict[str, Any]:
    """Deploy ``art`` to ``devices``; seconds until every job is over, and how the jobs ended."""
    uploaded = controller.api("POST", "/v1/artifacts", {
        "manifest_b64": base64.b64encode((art / "manifest.json").read_bytes()).decode(), "signature_b64": None,
        "model_b64": base64.b64encode((art / "model.tflite").read_bytes()).decode()})
    started = time.monotonic()
    dep = controller.api("POST", "/v1/deployments", {"artifact": uploaded["artifact"], "devices": devices})
    while time.monotonic() - started < timeout:
        state = controller.api("GET", f"/v1/deployments/{dep['deployment']}")
        if state["done"]:
            break
        time.sleep(1.0)
    elapsed = time.monotonic() - started
    ends: dict[str, int] = {}
    for d in state["devices"]:
        ends[d["state"]] = ends.get(d["state"], 0) + 1
    return {"seconds": round(elapsed, 1), "done": bool(state["done"]), "ends": ends}


def bench_one(tmp: Path, devices: int, window: float, interval: float, log: IO[str]) -> dict[str, Any]:
    prefix = f"n{devices}-"
    with Broker(tmp, **TUNED) as broker:
        controller = Controller(broker.url(), tmp / "store", log)
        sim = None
        try:
            sim = Simulator(broker.url(), devices, interval, prefix, log)
            connect_s = sim.wait_connected(timeout=60 + devices / 20)
            rows0, cpu0, t0 = controller.rows()[0], controller.cpu(), time.monotonic()
            time.sleep(window)
            rows1, cpu1, t1 = controller.rows()[0], controller.cpu(), time.monotonic()
            connected = sim.connected
            result: dict[str, Any] = {
                "setup": SETUP_1, "devices": devices, "connected": connected, "connect_s": round(connect_s, 1),
                "window_s": round(t1 - t0, 1), "offered_per_s": round(devices / interval, 1),
                "ingest_per_s": round((rows1 - rows0) / (t1 - t0), 1),
                "controller_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1), "rollout": None}
            if devices >= ROLLOUT_DEVICES:
                art = sim_artifact(tmp / "model-1mb", version=2, size=MODEL_BYTES)
                ids = [f"{prefix}{i:05d}" for i in range(ROLLOUT_DEVICES)]
                result["rollout"] = rollout(controller, art, ids, timeout=600)
            summary = sim.stop()
            sim = None
            stored, distinct = controller.settle()
            result.update(sent=int(summary["telemetry_sent"]), acked=int(summary["telemetry_acked"]),
                          connects=int(summary["connects"]), processes=len(summary["processes"]),
                          stored=stored, duplicates=stored - distinct, lost=int(summary["telemetry_sent"]) - distinct)
            return result
        finally:
            if sim is not None:
                sim.proc.kill()
                sim.proc.wait()
            controller.stop()


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        ro = r["rollout"]
        rollout_cell = "-" if ro is None else (f"{ro['seconds']:.0f}" if ro["done"] and set(ro["ends"]) == {"healthy"}
                                               else f"{ro['seconds']:.0f} ({ro['ends']})")
        rows.append([r["setup"], f"{r['devices']:,}", f"{r['connected']:,}",
                     f"{r['ingest_per_s']:,.0f} of {r['offered_per_s']:,.0f} rows/s",
                     f"{r['lost']} of {r['sent']:,}", rollout_cell, f"{r['controller_cpu_percent']:.0f} %"])
    rows.append([SETUP_2, "1,000 and 10,000", "-", "not measured: replicas not built yet", "-", "-", "-"])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--devices", default="1000,10000", help="fleet sizes, comma-separated (default 1000,10000)")
    ap.add_argument("--window", type=float, default=60.0, help="measured seconds of telemetry (default 60)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between a device's telemetry (default 10)")
    ap.add_argument("--quick", action="store_true", help="a 15 s window")
    args = ap.parse_args()
    try:
        sizes = [int(x) for x in args.devices.split(",")]
    except ValueError:
        ap.error(f"--devices {args.devices!r}: comma-separated numbers of devices")
    if any(n < 1 or n > 50_000 for n in sizes) or args.window <= 0 or args.interval <= 0:
        ap.error("--devices: 1 to 50000 each; --window and --interval: positive")
    window = 15.0 if args.quick else args.window
    raise_open_files(max(sizes) * 2 + 256)  # Mosquitto and the simulators inherit it (each raises its own too)
    results = []
    with tempfile.TemporaryDirectory(prefix="lepton-bench-scale-") as tmp:
        with open(Path(tmp) / "processes.log", "w") as log:
            for n in sizes:
                results.append(bench_one(Path(tmp) / f"fleet-{n}", n, window, args.interval, log))
    if args.json:
        print_json({"scale": results})
        return 0
    print(f"Fleet at scale on this machine ({os.cpu_count()} cores): QoS 1 telemetry every {args.interval:g} s per "
          f"device, {window:g} s measured once all are connected")
    print(render_table(("set-up", "devices", "connected", "telemetry ingest rate", "lost at QoS 1",
                        f"rollout of a 1 MB model to {ROLLOUT_DEVICES:,} devices (s)", "controller CPU"),
                       table_rows(results)))
    print("ingest: telemetry rows added to the controller's database per second in the window, of the rate the "
          "devices offered; lost: telemetry the devices sent minus distinct (device, seq) rows stored, after the "
          "simulator stopped and the database settled; rollout: a plain deployment while telemetry goes on; "
          "controller CPU: fleet serve's user+system time in the window, % of one core")
    for r in results:
        extra = f"; rollout ends {r['rollout']['ends']}" if r["rollout"] else ""
        print(f"  {r['devices']:,} devices in {r['processes']} simulator processes: connected in {r['connect_s']} s "
              f"({r['connects']:,} connects); telemetry sent {r['sent']:,}, "
              f"acknowledged by the broker {r['acked']:,}, rows {r['stored']:,} ({r['duplicates']} duplicates)"
              f"{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
