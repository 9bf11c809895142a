"""Benchmark the fleet at scale: simulated devices' telemetry into the controller's database, and a rollout.

    .venv/bin/python bench/scale.py [--json] [--devices 1000,10000] [--window 60] [--quick] [--setups 1,2]
                                    [--rollout-timeout 300]

Set-up 1, "one controller on SQLite with one Mosquitto": for each fleet size, a fresh private Mosquitto
(bench/fleet.py's queue limits, so that the broker itself drops nothing), ``lepton-edge fleet serve`` as
a subprocess (SQLite in its store) and ``lepton-edge fleet simulate`` (``--processes auto``: one process
per 800 devices), every device sending QoS 1 telemetry every ``--interval`` seconds.

Set-up 2, "two replicas on PostgreSQL with three NATS nodes" (lepton_edge/tools/replica_fleet.py): a
private PostgreSQL, three NATS nodes with JetStream and MQTT (MQTT 3.1.1, sessions and QoS 1 messages in
JetStream on all three nodes, QoS 1 consumers in memory on one: tools/nats.py LIGHT_CONSUMERS), two
``fleet serve`` replicas on both (each lists the three nodes, starting on a different one), and
``fleet simulate`` with the three nodes as ``--broker`` (device i starts on node i mod 3). The devices
start in steps of 1,000 (each step waits until it is connected): all at once, 10,000 devices time out
NATS's JetStream session lookups and reconnect in a storm. If not every device connects, the row says
how many did and the NATS log's most frequent error (what stopped it), and the rest is measured anyway.

Both: once every device is connected, a measured window of ``--window`` seconds: telemetry rows added to
the database per second (ingest rate, beside the offered rate devices/interval) and the controllers' CPU
time from /proc/<pid>/stat (% of one core, summed over replicas; the broker's, summed over the NATS
nodes, and how busy the whole machine was, in the line under the table). With 1,000 devices or more, a 1 MB
model is then deployed (a plain deployment, every block over MQTT) to 1,000 of them while their
telemetry goes on: seconds until every job is over. Then the simulators stop (devices resend what the
controller has not acknowledged and wait for the acks a few seconds; they report what they made) and,
once the database stops growing, "lost at QoS 1" is the records the devices made minus the distinct
(device, boot, seq) records stored. Everything runs on this machine (the simulators, the brokers, the
database and the controllers share its cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lepton_edge.console import print_json, render_table  # noqa: E402
from lepton_edge.errors import one_line  # noqa: E402
from lepton_edge.tools.devsim.artifact import sim_artifact  # noqa: E402
from lepton_edge.tools.devsim.limits import raise_open_files  # noqa: E402
from lepton_edge.tools.fleet_procs import ServeProcess, SimProcess, TelemetryRows, cpu_seconds  # noqa: E402
from lepton_edge.tools.mosquitto import Broker  # noqa: E402
from lepton_edge.tools.replica_fleet import ReplicaFleet  # noqa: E402

FLEET = "scale"
TUNED = {"max_queued_messages": 1_000_000, "max_inflight_messages": 100}
SETUP_1 = "one controller on SQLite with one Mosquitto"
SETUP_2 = "two replicas on PostgreSQL with three NATS nodes"
ROLLOUT_DEVICES, MODEL_BYTES = 1000, 1024 * 1024
STEP = 1000  # set-up 2 starts its devices this many at a time


def rollout(controller: ServeProcess, art: Path, devices: list[str], timeout: float) -> dict[str, Any]:
    """Deploy ``art`` to ``devices``; seconds until every job is over, and how the jobs ended."""
    started = time.monotonic()
    state: dict[str, Any] = {"done": False, "devices": []}
    result: dict[str, Any] = {}
    try:
        artifact = controller.upload(art)
        dep = controller.api("POST", "/v1/deployments", {"artifact": artifact, "devices": devices})
        while time.monotonic() - started < timeout:
            state = controller.api("GET", f"/v1/deployments/{dep['deployment']}")
            if state["done"]:
                break
            time.sleep(1.0)
    except (OSError, RuntimeError) as exc:  # an overloaded controller: the row says so, the run goes on
        result["error"] = f"the API did not answer: {one_line(exc)}"
    return {"seconds": round(time.monotonic() - started, 1), "done": bool(state["done"]),
            "ends": dict(Counter(d["state"] for d in state["devices"])), **result}


def machine_busy() -> tuple[float, float]:
    """Busy and total CPU time of the whole machine since boot, in ticks (/proc/stat's first line)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return float(sum(ticks) - idle), float(sum(ticks))


class Measured:
    """What one set-up gives the measurement: its simulators, controllers' CPU, database and API."""

    def __init__(self, setup: str, sims: list[SimProcess], cpu: Any, rows: TelemetryRows, api: ServeProcess,
                 broker_pids: list[int], note: str = "") -> None:
        self.setup, self.sims, self.cpu, self.rows, self.api, self.note = setup, sims, cpu, rows, api, note
        self.broker_pids = broker_pids

    def broker_cpu(self) -> float:
        """CPU seconds of the broker processes (Mosquitto, or the NATS nodes together)."""
        return sum(cpu_seconds(pid) for pid in self.broker_pids)

    @property
    def connected(self) -> int:
        return sum(s.connected for s in self.sims)


def measure(m: Measured, tmp: Path, devices: int, prefix: str, connect_s: float, window: float,
            interval: float, rollout_timeout: float) -> dict[str, Any]:
    rows0, cpu0, bcpu0, busy0, t0 = m.rows.count(), m.cpu(), m.broker_cpu(), machine_busy(), time.monotonic()
    time.sleep(window)
    rows1, cpu1, bcpu1, busy1, t1 = m.rows.count(), m.cpu(), m.broker_cpu(), machine_busy(), time.monotonic()
    result: dict[str, Any] = {
        "setup": m.setup, "devices": devices, "connected": m.connected, "connect_s": round(connect_s, 1),
        "window_s": round(t1 - t0, 1), "offered_per_s": round(devices / interval, 1),
        "ingest_per_s": round((rows1 - rows0) / (t1 - t0), 1),
        "controller_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "broker_cpu_percent": round(100 * (bcpu1 - bcpu0) / (t1 - t0), 1),
        "machine_busy_percent": round(100 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1.0), 1),
        "rollout": None, "note": m.note}
    if devices >= ROLLOUT_DEVICES:
        art = sim_artifact(tmp / "model-1mb", version=2, size=MODEL_BYTES)
        ids = [f"{prefix}{i:05d}" for i in range(ROLLOUT_DEVICES)]
        result["rollout"] = rollout(m.api, art, ids, timeout=rollout_timeout)
    summaries = [s.stop() for s in m.sims]
    stored, distinct = m.rows.settle()
    made = sum(int(s["telemetry_sent"]) for s in summaries)
    result.update(sent=made, acked=sum(int(s["telemetry_acked"]) for s in summaries),
                  confirmed=sum(int(s.get("telemetry_confirmed", 0)) for s in summaries),
                  resent=sum(int(s.get("telemetry_resent", 0)) for s in summaries),
                  connects=sum(int(s["connects"]) for s in summaries),
                  processes=sum(len(s["processes"]) for s in summaries),
                  stored=stored, duplicates=stored - distinct, lost=made - distinct)
    return result


def bench_one(tmp: Path, devices: int, window: float, interval: float, rollout_timeout: float,
              log: IO[str]) -> dict[str, Any]:
    prefix = f"n{devices}-"
    with Broker(tmp, **TUNED) as broker:
        controller = ServeProcess([broker.url()], tmp / "store", log, fleet=FLEET)
        sim = None
        try:
            sim = SimProcess([broker.url()], devices, log, fleet=FLEET, prefix=prefix, interval=interval)
            connect_s = sim.wait_connected(timeout=60 + devices / 20)
            m = Measured(SETUP_1, [sim], controller.cpu, TelemetryRows(tmp / "store" / "fleet.db"), controller,
                         [broker.proc.pid] if broker.proc else [])
            result = measure(m, tmp, devices, prefix, connect_s, window, interval, rollout_timeout)
            sim = None
            return result
        finally:
            if sim is not None:
                sim.kill()
            controller.stop()


def nats_trouble(rf: ReplicaFleet) -> str:
    """The most frequent error in the NATS nodes' logs (client addresses and ids left out), and how often."""
    kinds: Counter[str] = Counter()
    for node in rf.nats.nodes:
        for line in node.log().splitlines():
            if "[ERR]" in line:
                text = line.split("[ERR]", 1)[1].split(" - ")[-1]
                kinds[text.split(":", 1)[0].split('"')[0].strip() + ": " + text.split(": ")[-1].split(" on ")[0]] += 1
    if not kinds:
        return ""
    text, n = kinds.most_common(1)[0]
    return f"{n:,}x {text}"


def bench_two(tmp: Path, devices: int, window: float, interval: float, rollout_timeout: float) -> dict[str, Any]:
    """Set-up 2; devices ``s<k>-00000 ..`` in steps of :data:`STEP` (the first step's are the rollout's)."""
    with ReplicaFleet(tmp, replicas=2, fleet=FLEET) as rf:
        sims: list[SimProcess] = []
        started, note = time.monotonic(), ""
        for k in range(-(-devices // STEP)):
            count = min(STEP, devices - k * STEP)
            sims.append(rf.simulate(count, interval=interval, prefix=f"s{k}-"))
            try:
                sims[-1].wait_connected(timeout=120)
            except RuntimeError:
                time.sleep(10)
                note = (f"{sum(s.connected for s in sims):,} of {k * STEP + count:,} connected when step {k + 1} "
                        f"did not connect within 120 s; NATS: {nats_trouble(rf)}")
                break
        connect_s = time.monotonic() - started
        m = Measured(SETUP_2, sims, rf.cpu, rf.telemetry, rf.replicas[0],
                     [node.proc.pid for node in rf.nats.nodes if node.proc is not None], note)
        return measure(m, tmp, devices, "s0-", connect_s, window, interval, rollout_timeout)


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        ro = r["rollout"]
        if ro is None:
            rollout_cell = "-"
        elif ro.get("error"):
            rollout_cell = f"not done: {ro['error']}"
        elif ro["done"] and set(ro["ends"]) == {"healthy"}:
            rollout_cell = f"{ro['seconds']:.0f}"
        else:
            rollout_cell = f"{ro['seconds']:.0f} ({ro['ends']})"
        rows.append([r["setup"], f"{r['devices']:,}", f"{r['connected']:,}",
                     f"{r['ingest_per_s']:,.0f} of {r['offered_per_s']:,.0f} rows/s",
                     f"{r['lost']:,} of {r['sent']:,}", rollout_cell, f"{r['controller_cpu_percent']:.0f} %"])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--devices", default="1000,10000", help="fleet sizes, comma-separated (default 1000,10000)")
    ap.add_argument("--setups", default="1,2", help="which set-ups, comma-separated (default 1,2)")
    ap.add_argument("--window", type=float, default=60.0, help="measured seconds of telemetry (default 60)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between a device's telemetry (default 10)")
    ap.add_argument("--quick", action="store_true", help="a 15 s window")
    ap.add_argument("--rollout-timeout", type=float, default=300.0,
                    help="seconds the 1 MB rollout may take before it is reported unfinished (default 300)")
    args = ap.parse_args()
    try:
        sizes = [int(x) for x in args.devices.split(",")]
        setups = [int(x) for x in args.setups.split(",")]
    except ValueError:
        ap.error("--devices and --setups: comma-separated numbers")
    if any(n < 1 or n > 50_000 for n in sizes) or min(args.window, args.interval, args.rollout_timeout) <= 0:
        ap.error("--devices: 1 to 50000 each; --window, --interval and --rollout-timeout: positive")
    if not setups or any(k not in (1, 2) for k in setups):
        ap.error("--setups: 1, 2 or 1,2")
    window = 15.0 if args.quick else args.window
    raise_open_files(max(sizes) * 2 + 256)  # Mosquitto and the simulators inherit it (each raises its own too)
    results = []
    with tempfile.TemporaryDirectory(prefix="lepton-bench-scale-") as tmp:
        with open(Path(tmp) / "processes.log", "w") as log:
            for k in setups:
                for n in sizes:
                    where = Path(tmp) / f"setup{k}-{n}"
                    results.append(bench_one(where, n, window, args.interval, args.rollout_timeout, log) if k == 1
                                   else bench_two(where, n, window, args.interval, args.rollout_timeout))
                    print(f"measured set-up {k} with {n:,} devices", file=sys.stderr, flush=True)
    if args.json:
        print_json({"scale": results})
        return 0
    print(f"Fleet at scale on this machine ({os.cpu_count()} cores): QoS 1 telemetry every {args.interval:g} s per "
          f"device, {window:g} s measured once all are connected")
    print(render_table(("set-up", "devices", "connected", "telemetry ingest rate", "lost at QoS 1",
                        f"rollout of a 1 MB model to {ROLLOUT_DEVICES:,} devices (s)", "controller CPU"),
                       table_rows(results)))
    print("ingest: telemetry rows added to the database per second in the window, of the rate the devices offered; "
          "lost: telemetry records the devices made minus distinct (device, boot, seq) records stored, after the "
          "simulators stopped and the database settled; rollout: a plain deployment while telemetry goes on; "
          "controller CPU: fleet serve's user+system time in the window, % of one core, summed over replicas")
    for r in results:
        extra = f"; rollout ends {r['rollout']['ends']}" if r["rollout"] else ""
        print(f"  {r['setup']}, {r['devices']:,} devices in {r['processes']} simulator processes: connected in "
              f"{r['connect_s']} s ({r['connects']:,} connects); telemetry made {r['sent']:,}, acknowledged by the "
              f"broker {r['acked']:,}, by the controller {r['confirmed']:,}, resent {r['resent']:,}; rows "
              f"{r['stored']:,} ({r['duplicates']} duplicates); broker CPU {r['broker_cpu_percent']:.0f} % of one "
              f"core, the machine {r['machine_busy_percent']:.0f} % busy{extra}")
        if r["note"]:
            print(f"    {r['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
