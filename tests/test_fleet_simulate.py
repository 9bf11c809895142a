"""``lepton-edge fleet simulate`` and the simulated devices, against a real Mosquitto and a real controller.

Counted from both sides: retained statuses and telemetry through a paho subscriber of the test's own,
the controller's deployments and rollouts, and the devices' own JSONL logs (``--log-dir``).
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace

import paho.mqtt.client as paho
import pytest

from conftest import REPO, assert_one_line_error, run_cli
from fleet_helpers import FLEET, api, keypair, make_artifact
from lepton_edge.fleet.rollout import RolloutParams
from lepton_edge.mqtt import SessionOptions, Status, Telemetry, parse_broker_url
from lepton_edge.tools.devsim import FACTORY_SHA256, FLEET_OPTIONS, SimFleet, plan_fleet, read_events
from lepton_edge.tools.devsim.fleet import COUNT_KEYS
from lepton_edge.tools.devsim.slots import FACTORY_MODEL, SlotModel, Slots

FAST = SessionOptions(min_backoff_s=0.1, max_backoff_s=1.0, max_queued=1000)
# The simulator is these tests' subject; the controller is its counterpart: SQLite only (the controller's
# behaviour on PostgreSQL is the other fleet tests').
pytestmark = pytest.mark.fleet_stores("sqlite")


class Watcher:
    """A plain paho subscriber: the retained statuses and the telemetry of a fleet's devices."""

    def __init__(self, broker, fleet: str) -> None:
        self.statuses: dict[str, Status] = {}
        self.telemetry: dict[str, list[Telemetry]] = {}
        self._lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"watch-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe([(f"lepton/v1/{fleet}/+/status", 1),
                                                            (f"lepton/v1/{fleet}/+/telemetry", 0)])
        host, port = broker.url().split("://", 1)[1].rsplit(":", 1)
        self.client.connect(host, int(port))
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        _, _, _, device, kind = msg.topic.split("/", 4)
        with self._lock:
            if kind == "status":
                self.statuses[device] = Status.from_bytes(msg.payload)
            else:
                self.telemetry.setdefault(device, []).append(Telemetry.from_bytes(msg.payload))

    def wait(self, condition, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if condition(self):
                    return True
            time.sleep(0.05)
        return False

    def online(self, prefix: str = "") -> set[str]:
        return {d for d, s in self.statuses.items() if s.online and d.startswith(prefix)}

    def p99(self, device: str, version: int) -> list[float]:
        return [t.values["latency_p99_ms"] for t in self.telemetry.get(device, [])
                if t.values.get("model_version") == version and "latency_p99_ms" in t.values]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watcher():
    made = []

    def make(broker, fleet: str = "default") -> Watcher:
        made.append(Watcher(broker, fleet))
        return made[-1]
    yield make
    for w in made:
        w.close()


class Simulator:
    """``lepton-edge fleet simulate --json`` in a process of its own."""

    def __init__(self, broker, *flags: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "lepton_edge", "fleet", "simulate", "--broker",
                                      broker.url(), "--json", *map(str, flags)], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.start = json.loads(self.proc.stdout.readline())
        assert self.start["event"] == "start", self.start
        self.lines: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def wait_progress(self, condition, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e["event"] == "progress" and condition(e) for e in list(self.lines)):
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> tuple[int, list[dict], str]:
        """SIGTERM; (exit code, the JSON lines after start, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        err = self.proc.stderr.read()
        self.proc.wait(60)
        self._reader.join(10)
        return self.proc.returncode, self.lines, err


@pytest.fixture
def simulator():
    made = []

    def make(broker, *flags: str) -> Simulator:
        made.append(Simulator(broker, *flags))
        return made[-1]
    yield make
    for s in made:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def ids(prefix: str, n: int) -> set[str]:
    return {f"{prefix}{i:05d}" for i in range(n)}


def test_two_processes_bring_40_devices_with_unique_ids_and_the_seeds_failing_set(broker, watcher, simulator):
    w = watcher(broker)
    sim = simulator(broker, "--devices", 40, "--processes", 2, "--id-prefix", "run1-", "--tags", "site:lab",
                    "hw:sim", "--fail-rate", 0.1, "--slow-rate", 0.05, "--seed", 7, "--telemetry-interval", 0.5)
    failing, slow = sim.start["failing"], sim.start["slow"]
    assert len(failing) == 4 and len(slow) == 2 and not set(failing) & set(slow)  # round(0.1*40), round(0.05*40)
    plan = plan_fleet(40, 2, fail_rate=0.1, slow_rate=0.05, seed=7)
    assert failing == [f"run1-{i:05d}" for i in plan.fail] and slow == [f"run1-{i:05d}" for i in plan.slow]
    assert plan_fleet(40, 2, fail_rate=0.1, seed=8).fail != plan.fail  # another seed, another set

    # the same seed in one process, under another prefix: the same devices fail, and the ids do not collide
    again = simulator(broker, "--devices", 40, "--id-prefix", "run2-", "--fail-rate", 0.1, "--slow-rate", 0.05,
                      "--seed", 7, "--duration", 60)
    assert [d.replace("run2-", "run1-") for d in again.start["failing"]] == failing
    assert w.wait(lambda w: len(w.online()) == 80), sorted(w.online())
    assert w.online("run1-") == ids("run1-", 40) and w.online("run2-") == ids("run2-", 40)
    for device in ids("run1-", 40):
        s = w.statuses[device]
        assert s.tags == ("site:lab", "hw:sim") and s.profile == "sim" and s.latency_budget_ms == 20.0
        assert s.model is not None and (s.model.name, s.model.version, s.model.sha256) == ("sim-model", 1,
                                                                                           FACTORY_SHA256)
    assert w.wait(lambda w: all(len(w.telemetry.get(d, [])) >= 2 for d in ids("run1-", 40)))
    t = w.telemetry["run1-00000"]
    assert t[-1].values["inferences"] >= t[0].values["inferences"] and t[-1].seq > t[0].seq
    assert 3 <= t[-1].values["latency_p50_ms"] <= 7 and t[-1].values["errors"] == 0

    # the broker goes away: every device comes back by itself, in both processes
    assert sim.wait_progress(lambda e: e["connected"] == 40)
    broker.restart(down_s=0.5)
    assert sim.wait_progress(lambda e: e["connected"] == 40 and e["connects"] == 80), sim.lines[-1]

    code, lines, err = sim.stop()
    assert code == 0, err
    assert [line for line in err.splitlines() if line.strip()] == [
        "fleet simulate: no --trusted-key given: the simulated devices check no signatures"]
    summary = lines[-1]
    assert summary["event"] == "summary" and summary["connected"] == 40
    assert sorted(p["devices"] for p in summary["processes"]) == [20, 20]
    # a clean stop: every device said offline itself (no Last Will), and the other run is untouched
    assert w.wait(lambda w: not w.online("run1-"), 15)
    assert {w.statuses[d].reason for d in ids("run1-", 40)} == {"shutdown"}
    assert w.online("run2-") == ids("run2-", 40)


def test_a_deployment_fails_on_the_failing_devices_and_slows_the_slow_ones(tmp_path, broker, fleet, watcher,
                                                                          simulator):
    priv, _, pub_path = keypair(tmp_path / "keys")
    w = watcher(broker, FLEET)
    logs = tmp_path / "logs"
    sim = simulator(broker, "--fleet", FLEET, "--devices", 10, "--processes", 2, "--fail-rate", 0.2,
                    "--slow-rate", 0.2, "--slow-factor", 3, "--seed", 5, "--telemetry-interval", 0.2,
                    "--trusted-key", pub_path, "--log-dir", logs)
    devices, failing, slow = sorted(ids("sim-", 10)), set(sim.start["failing"]), set(sim.start["slow"])
    assert len(failing) == 2 and len(slow) == 2 and sim.start["checks_signatures"] is True
    deadline = time.monotonic() + 30
    while not all(fleet.controller.is_online(d) for d in devices) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.wait(lambda w: all(len(w.p99(d, 1)) >= 3 for d in devices))

    art = fleet.upload(make_artifact(tmp_path / "v2", version=2, size=50_000, private_key=priv))
    status, dep = api(fleet.http.url, "POST", "/v1/deployments", {"artifact": art, "devices": devices,
                                                                 "block_size": 16384})
    assert status == 201, dep
    deadline = time.monotonic() + 40
    while not (dep := fleet.state(dep["deployment"]))["done"] and time.monotonic() < deadline:
        time.sleep(0.1)
    states = {d["device"]: d for d in dep["devices"]}
    for device in devices:
        if device in failing:
            assert states[device]["state"] == "rolled_back" and "simulated" in states[device]["reason"]
        else:
            assert states[device]["state"] == "healthy", states[device]
    updated = [d for d in devices if d not in failing]
    assert w.wait(lambda w: all(len(w.p99(d, 2)) >= 3 for d in updated))
    assert all(not w.p99(d, 2) for d in failing)  # they still serve version 1
    for device in updated:
        ratio = statistics.median(w.p99(device, 2)) / statistics.median(w.p99(device, 1))
        assert (2.7 < ratio < 3.3) if device in slow else (0.9 < ratio < 1.1), (device, ratio)

    # an unsigned model is refused before a byte is asked for (the devices check against --trusted-key)
    unsigned = fleet.upload(make_artifact(tmp_path / "v3", version=3, size=20_000))
    status, dep3 = api(fleet.http.url, "POST", "/v1/deployments", {"artifact": unsigned, "devices": [updated[0]]})
    deadline = time.monotonic() + 20
    while not (dep3 := fleet.state(dep3["deployment"]))["done"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dep3["devices"][0]["state"] == "failed" and "signature" in dep3["devices"][0]["reason"]

    code, _, err = sim.stop()
    assert code == 0 and "trusted-key" not in err, err
    # the devices' side: one log per process, each device started its job once and asked for its blocks
    assert sorted(p.name for p in logs.iterdir()) == ["sim-p0.jsonl", "sim-p1.jsonl"]
    events = read_events(logs)
    job_of = {d: states[d]["job"] for d in devices}
    for device in devices:
        mine = [e for e in events if e["device"] == device and e["job"] == job_of[device]]
        assert [e["repeat"] for e in mine if e["event"] == "job"] == [False]
        assert {e["offset"] for e in mine if e["event"] == "block"} == {0, 16384, 32768, 49152}
        reached = [e["state"] for e in mine if e["event"] == "state"]
        assert reached[0] == "accepted" and reached[-1] == ("rolled_back" if device in failing else "healthy")
    assert [e["state"] for e in events if e["job"] == dep3["devices"][0]["job"] and e["event"] == "state"] == \
        ["failed"]


def test_staged_rollouts_revert_to_the_factory_model_or_confirm(tmp_path, broker, fleet):
    """A rollout through the real controller: aborted, the updated devices go back to the factory model (it
    counts as their previous one); completed, they raise their floor. Staged installs keep the floor."""
    priv, pub, _ = keypair(tmp_path / "keys")
    options = replace(FLEET_OPTIONS, fleet=FLEET, session=FAST, trusted_keys=(pub,), require_signature=True,
                      telemetry_interval_s=0.2)
    cfg = parse_broker_url(broker.url())
    sims = [SimFleet(cfg, 4, prefix="ab-", options=options, fail={0, 1}, log_dir=tmp_path / "logs"),
            SimFleet(cfg, 2, prefix="ok-", options=options, log_dir=tmp_path / "logs")]
    for s in sims:
        s.start()
    try:
        assert all(s.wait_connected(10) for s in sims)
        deadline = time.monotonic() + 10
        while not all(fleet.controller.is_online(d) for s in sims for d in s.ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        art = fleet.upload(make_artifact(tmp_path / "v2", version=2, size=30_000, private_key=priv))
        c = fleet.controller
        aborted = c.create_rollout(art, sims[0].ids, RolloutParams(canary=4, soak_s=0.5, max_failures_pct=20))
        completed = c.create_rollout(art, sims[1].ids, RolloutParams(canary=1, soak_s=0.5))
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not (c.rollout(aborted["rollout"])["state"] == "aborted"
                                                   and c.rollout(completed["rollout"])["state"] == "completed"):
            time.sleep(0.1)
        assert c.rollout(aborted["rollout"])["state"] == "aborted", c.rollout(aborted["rollout"])
        assert c.rollout(completed["rollout"])["state"] == "completed", c.rollout(completed["rollout"])
        for d in sims[0].devices:  # the failing ones rolled back, the others were reverted: all on the factory model
            assert d.model is not None and d.model.sha256 == FACTORY_SHA256 and d.confirmed_version == 1, d.id
            assert not d.slots.staged
        for d in sims[1].devices:
            assert d.model is not None and d.model.version == 2 and d.confirmed_version == 2 and not d.slots.staged
    finally:
        for s in sims:
            s.stop()
    events = read_events(tmp_path / "logs")
    reverts = [e for e in events if e["event"] == "command" and e["action"] == "revert" and not e["repeat"]]
    assert sorted(e["device"] for e in reverts) == ["ab-00002", "ab-00003"]
    assert {e["sha256"] for e in reverts} == {FACTORY_SHA256}
    confirms = [e for e in events if e["event"] == "command" and e["action"] == "confirm" and not e["repeat"]]
    assert sorted(e["device"] for e in confirms) == ["ok-00000", "ok-00001"]
    for e in reverts + confirms:
        answers = [x["state"] for x in events if x["event"] == "state" and x["job"] == e["job"]]
        assert answers[-1] == "healthy", (e, answers)


def test_slots_follow_the_revert_and_confirm_contract():
    """The rules without a broker: staged installs hold the floor and the previous slot; revert only while
    held and only to what that slot holds; confirm only for the model that runs."""
    v2 = SlotModel("sim-model", 2, "22" * 32, b"{}", None)
    refused_keys = []

    def reverify(model):
        refused_keys.append(model.sha256)

    s = Slots(FACTORY_MODEL)
    assert s.revert(FACTORY_SHA256, reverify) is None            # already there
    assert "no unconfirmed" in s.revert("33" * 32, reverify)
    s.activate(s.install(v2), staged=True)
    assert (s.active, s.floor, s.staged, s.previous) == ("b", 1, True, "a")
    assert "does not hold" in s.revert("33" * 32, reverify)
    assert "served a model before" in s.revert(None, reverify)
    assert s.revert(FACTORY_SHA256, reverify) is None and s.current == FACTORY_MODEL and not s.staged
    assert refused_keys == []                                   # the factory model has no manifest to check
    assert "no unconfirmed" in s.revert("22" * 32, reverify)     # the hold is over
    s.activate(s.install(v2), staged=True)
    assert "not running" in s.confirm(FACTORY_SHA256)
    assert s.confirm("22" * 32) is None and s.floor == 2 and not s.staged
    empty = Slots()
    empty.activate(empty.install(v2), staged=True)
    assert empty.revert(None, reverify) is None and empty.current is None
    back = Slots.from_dict(json.loads(json.dumps(s.as_dict())))
    assert (back.current, back.floor, back.active) == (v2, 2, "b")


@pytest.mark.parametrize("flags, words", [
    (["--devices", "0"], "--devices"),
    (["--devices", "3", "--processes", "4"], "--processes"),
    (["--devices", "3", "--fail-rate", "1.5"], "--fail-rate"),
    (["--devices", "3", "--fail-rate", "0.7", "--slow-rate", "0.7"], "cannot be both"),
    (["--devices", "3", "--slow-factor", "0.5"], "--slow-factor"),
    (["--devices", "3", "--id-prefix", "no/slash-"], "--id-prefix"),
    (["--devices", "3", "--tags", "two words"], "--tags"),
    (["--devices", "3", "--telemetry-interval", "-1"], "--telemetry-interval"),
    (["--devices", "3", "--trusted-key", "/nonexistent/key.pub"], "--trusted-key /nonexistent/key.pub"),
    (["--devices", "x"], "--devices"),
    (["--devices", "3", "--processes", "some"], "--processes"),
])
def test_bad_flags_are_one_line_errors(flags, words):
    proc = run_cli("fleet", "simulate", "--broker", "mqtt://127.0.0.1:1", *flags, timeout=60)
    assert words in assert_one_line_error(proc, 2)


class SeqCounter:
    """A QoS 1 subscriber to a fleet's telemetry on one broker: each device's seqs as they arrive."""

    def __init__(self, broker, fleet: str) -> None:
        self.seqs: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"seqs-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(f"lepton/v1/{fleet}/+/telemetry", 1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        host, port = broker.url().split("://", 1)[1].rsplit(":", 1)
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        device = msg.topic.split("/")[3]
        with self._lock:
            self.seqs.setdefault(device, []).append(Telemetry.from_bytes(msg.payload).seq)

    def snapshot(self) -> dict[str, list[int]]:
        with self._lock:
            return {d: list(s) for d, s in self.seqs.items()}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_processes_split_round_robin_over_two_brokers_and_every_telemetry_sent_is_stored(tmp_path, broker, fleet,
                                                                                         simulator):
    """30 devices in 3 processes over two Mosquittos: device i on broker i mod 2. Broker A's telemetry goes
    into the controller's database, broker B's to a QoS 1 subscriber; nothing is killed, so what the devices
    say they sent, what the brokers acknowledged and what arrived are the same count, without gaps."""
    from lepton_edge.tools.mosquitto import Broker

    with Broker(tmp_path / "b", max_queued_messages=100000) as other:
        on_b = SeqCounter(other, FLEET)
        try:
            sim = simulator(broker, "--broker", other.url(), "--fleet", FLEET, "--devices", 30, "--processes", 3,
                            "--id-prefix", "rr-", "--telemetry-interval", 0.2)
            assert sim.start["processes"] == 3 and len(sim.start["brokers"]) == 2
            devices = sorted(ids("rr-", 30))
            even, odd = devices[0::2], devices[1::2]
            assert sim.wait_progress(lambda e: e["connected"] == 30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (
                    all(fleet.controller.db.telemetry_count(d) >= 3 for d in even)
                    and all(len(on_b.snapshot().get(d, [])) >= 3 for d in odd)):
                time.sleep(0.1)
            code, lines, err = sim.stop()
            assert code == 0, err
            summary = lines[-1]
            assert summary["event"] == "summary"
            assert sorted(p["devices"] for p in summary["processes"]) == [10, 10, 10]
            sent = summary["telemetry_sent"]
            assert sent > 30 * 3 and summary["telemetry_acked"] == sent and summary["dropped"] == 0
            for key in COUNT_KEYS:  # the devices' counts, summed over the processes
                assert summary[key] == sum(p[key] for p in summary["processes"]), key
            assert summary["telemetry_unconfirmed"] == sent - summary["telemetry_confirmed"]
            assert summary["telemetry_dropped"] == 0 and summary["ota_blocks"] == 0

            # what arrived: broker A's devices in the controller's database, broker B's at the subscriber
            def stored() -> dict[str, list[int]]:
                rows = {d: [r[1] for r in fleet.controller.db.telemetry_rows(d, 0.0, 100_000)] for d in devices}
                return {d: s for d, s in rows.items() if s}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and \
                    sum(map(len, stored().values())) + sum(map(len, on_b.snapshot().values())) < sent:
                time.sleep(0.1)
            in_db, at_b = stored(), on_b.snapshot()
        finally:
            on_b.close()
    assert sorted(in_db) == even and sorted(at_b) == odd  # round-robin: each device on one broker only
    arrived = {**in_db, **at_b}
    for device, seqs in arrived.items():
        assert sorted(set(seqs)) == list(range(len(set(seqs)))), device  # no gap: nothing lost in between
    assert sum(len(set(s)) for s in arrived.values()) == sent  # and nothing lost at the end


def test_processes_auto_is_one_per_800_devices():
    from argparse import Namespace

    from lepton_edge.tools.devsim.simulate import auto_processes, check_args

    assert [auto_processes(n) for n in (1, 800, 801, 1600, 10_000)] == [1, 1, 2, 2, 13]
    args = Namespace(devices=10_000, processes="auto", fail_rate=0.0, slow_rate=0.0, slow_factor=3.0,
                     telemetry_interval=10.0, telemetry_resend=None, duration=None, id_prefix="sim-", tags=[])
    check_args(args)
    assert args.processes == 13


def test_too_few_open_files_for_a_process_share_is_a_one_line_error():
    import resource

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    proc = subprocess.run([sys.executable, "-m", "lepton_edge", "fleet", "simulate", "--broker", "mqtt://127.0.0.1:1",
                           "--devices", "400", "--processes", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, preexec_fn=low_limit)
    line = assert_one_line_error(proc, 2)
    assert "open files" in line and "--processes" in line


def test_devices_on_a_broker_that_dies_fail_over_to_the_next(tmp_path, broker, fleet, simulator):
    """Two brokers, device i starting on broker i mod 2; broker B is killed: its devices go on through
    broker A (the next in their list), where the controller sees them online and their telemetry again."""
    from lepton_edge.tools.mosquitto import Broker

    devices = sorted(ids("fo-", 10))
    even, odd = devices[0::2], devices[1::2]
    with Broker(tmp_path / "b") as other:
        sim = simulator(broker, "--broker", other.url(), "--fleet", FLEET, "--devices", 10, "--processes", 2,
                        "--id-prefix", "fo-", "--telemetry-interval", 0.2)
        assert sim.wait_progress(lambda e: e["connected"] == 10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(fleet.controller.is_online(d) for d in even):
            time.sleep(0.05)
        assert all(fleet.controller.is_online(d) for d in even)
        assert not any(fleet.controller.db.telemetry_count(d) for d in odd)  # they are on broker B
        other.kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(fleet.controller.db.telemetry_count(d) >= 3 for d in odd):
        time.sleep(0.1)
    assert all(fleet.controller.is_online(d) for d in devices)
    assert all(fleet.controller.db.telemetry_count(d) >= 3 for d in odd)
    code, lines, err = sim.stop()
    assert code == 0, err
    assert lines[-1]["connects"] == 10 + len(odd)  # broker B's devices connected twice, the others once
