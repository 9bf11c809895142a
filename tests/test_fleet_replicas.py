"""Controller replicas (docs/REPLICAS.md): ``fleet serve`` processes on one PostgreSQL and one Mosquitto act as
one controller. Each device's messages are handled by exactly one replica, telemetry is written once per
(device, boot, seq) and acknowledged after commit, a SIGKILLed replica's devices and jobs move to the
other, and a rollout is driven by one replica at a time (its lease moves when the driver dies)."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import fleet_helpers
from fleet_helpers import api, make_artifact, upload_body, wait_for
from lepton_edge.fleet.replicas import (
    HEARTBEAT_S,
    REPLICA_TTL_S,
    Membership,
    ReplicaInfo,
    default_client_id,
    owner_of,
)
from lepton_edge.fleet.rollout_driver import LEASE_S
from lepton_edge.fleet.store import FleetDB
from lepton_edge.mqtt import DeviceTopics, MqttClient, Telemetry, TelemetryAck, new_boot_id, parse_broker_url
from lepton_edge.tools.devsim import FLEET_OPTIONS, SimFleet, read_events

FLEET = "rep"
REPO = Path(__file__).resolve().parent.parent
# docs/REPLICAS.md: a dead replica's devices move at most replica_ttl_s + heartbeat_s after its last
# heartbeat, its rollouts after the lease and a tick or two (0.5 s each). The asserts add SLACK_S: this
# test's polling (HTTP, the database) and one database round trip.
TAKEOVER_BOUND_S = REPLICA_TTL_S + HEARTBEAT_S
ROLLOUT_BOUND_S = LEASE_S + 2 * 0.5
SLACK_S = 0.5


class Serve:
    """One ``lepton-edge fleet serve`` process on PostgreSQL, with its default (host + pid) replica id."""

    def __init__(self, broker: Any, store: Path, db: str, log: Path) -> None:
        self.log = log
        argv = [sys.executable, "-m", "lepton_edge", "fleet", "serve", "--broker", broker.url(), "--fleet", FLEET,
                "--store", str(store), "--db", db, "--http", "127.0.0.1:0"]
        with open(log, "w") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                         text=True, cwd=REPO)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("fleet controller: "), f"{line!r}: {log.read_text()[-2000:]}"
        self.url = line.split()[2]
        self.id = default_client_id(FLEET, pid=self.proc.pid)
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def health(self) -> dict[str, Any]:
        return api(self.url, "GET", "/v1/health")[1]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, got = api(self.url, method, path, body)
        assert status < 300, (status, got)
        return got

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def replicas(tmp_path, broker, pg_url):
    """``replicas(n)``: n ``fleet serve`` processes, each with a --store of its own (the artifacts come from the
    database), each seeing all n."""
    started: list[Serve] = []

    def start(n: int) -> list[Serve]:
        started.extend(Serve(broker, tmp_path / f"store-{i}", pg_url, tmp_path / f"serve-{i}.log") for i in range(n))
        ids = sorted(s.id for s in started)
        for s in started:
            assert s.id in s.health()["replicas"], s.health()   # the default id is host + pid
            wait_for(lambda s=s: s.health()["replicas"] == ids, 10, lambda s=s: s.health())
        return started
    yield start
    for s in started:
        s.stop()


def owners(ids: list[str], serves: list[Serve]) -> dict[str, Serve]:
    live = tuple(sorted(s.id for s in serves))
    by_id = {s.id: s for s in serves}
    return {d: by_id[owner_of(d, live)] for d in ids}


def test_a_default_id_is_host_and_pid_and_fits_the_name_rules():
    assert default_client_id("f", "edge-1", 42) == "lepton-edge-controller-f-edge-1-42"
    long = default_client_id("fleet", "a.very long host name!" * 4, 123456)
    assert len(long) <= 64 and long.endswith("-123456") and " " not in long and "!" not in long


def test_rendezvous_moves_only_the_departed_replicas_devices():
    devices = [f"d{i}" for i in range(2000)]
    three = {d: owner_of(d, ("a", "b", "c")) for d in devices}
    two = {d: owner_of(d, ("a", "b")) for d in devices}
    assert all(two[d] == three[d] for d in devices if three[d] != "c")   # a's and b's devices stay
    assert {three[d] for d in devices} == {"a", "b", "c"}
    assert 500 < sum(1 for d in devices if three[d] == "c") < 833          # about a third each


class CutOff(FleetDB):
    """A real database whose heartbeats fail while ``cut`` is set (a replica cut off from the database)."""

    cut = False

    def heartbeat(self, *args: Any, **kw: Any) -> list[str]:
        if self.cut:
            raise OSError("the database does not answer")
        return super().heartbeat(*args, **kw)


def test_a_replica_cut_off_from_the_database_owns_nothing_until_it_is_back(tmp_path):
    changes: list[tuple[str, ...]] = []
    a_db, b_db = CutOff(tmp_path / "fleet.db"), FleetDB(tmp_path / "fleet.db")
    a = Membership(a_db, ReplicaInfo("a", "h", 1), changes.append, heartbeat_s=0.05, ttl_s=0.3)
    b = Membership(b_db, ReplicaInfo("b", "h", 2), lambda live: None, heartbeat_s=0.05, ttl_s=0.3)
    a.join()
    b.join()
    try:
        wait_for(lambda: a.live == b.live == ("a", "b"), 5, lambda: (a.live, b.live))
        devices = [f"d{i}" for i in range(50)]
        assert sorted(d for d in devices if a.owns(d)) == sorted(d for d in devices if not b.owns(d))
        a_db.cut = True
        wait_for(lambda: a.live == () and b.live == ("b",), 5, lambda: (a.live, b.live))
        assert not any(a.owns(d) for d in devices) and all(b.owns(d) for d in devices)
        a_db.cut = False
        wait_for(lambda: a.live == ("a", "b") and changes[-1] == ("a", "b"), 5, lambda: (a.live, changes))
        assert any(a.owns(d) for d in devices)
        b.leave()
        wait_for(lambda: a.live == ("a",), 5, lambda: a.live)
        a_db.cut = True                      # alone, a replica keeps its devices without the database
        time.sleep(0.6)
        assert a.live == ("a",) and all(a.owns(d) for d in devices)
    finally:
        a_db.cut = False
        a.leave()
        b.leave()
        a_db.close()
        b_db.close()


class Acks:
    """A stand-in device side: publishes telemetry, collects the ``telemetry/ack`` of every device of ``fleet``."""

    def __init__(self, broker: Any, fleet: str, client_id: str) -> None:
        self.fleet, self.lock = fleet, threading.Lock()
        self.seqs: dict[str, list[int]] = collections.defaultdict(list)
        self.boots: set[str] = set()
        self.client = MqttClient(parse_broker_url(broker.url()), client_id)
        self.client.subscribe(f"lepton/v1/{fleet}/+/telemetry/ack", self._on_ack, qos=0)
        self.client.start()
        assert self.client.wait_connected(5)
        time.sleep(0.3)  # the subscription is in place before the first ack

    def _on_ack(self, topic: str, payload: bytes) -> None:
        ack = TelemetryAck.from_bytes(payload)
        with self.lock:
            self.boots.add(ack.boot)
            self.seqs[topic.split("/")[3]].extend(ack.seqs)

    def send(self, device: str, payload: bytes) -> None:
        self.client.publish(DeviceTopics(self.fleet, device).telemetry, payload, qos=1)

    def clear(self) -> None:
        with self.lock:
            self.seqs.clear()

    def stop(self) -> None:
        self.client.stop()


def test_one_controller_alone_owns_every_device_and_acknowledges_telemetry(fleet, broker):
    c = fleet.controller                 # the default set-up: one controller in this process, on each store
    acks = Acks(broker, fleet_helpers.FLEET, "lone-test-devices")
    try:
        boot = new_boot_id()
        for seq in range(5):
            acks.send("dev-a", Telemetry(seq, time.time(), {"inferences": seq}, boot).to_bytes())
        acks.send("dev-old", Telemetry(0, time.time(), {"inferences": 1}).to_bytes())  # no boot: an old sender
        wait_for(lambda: sorted(acks.seqs["dev-a"]) == [0, 1, 2, 3, 4], 10, lambda: dict(acks.seqs))
        wait_for(lambda: c.db.telemetry_count() == 6, 10, "not all written")
        acks.send("dev-a", Telemetry(2, 0.0, {"inferences": 2}, boot).to_bytes())       # a resend
        wait_for(lambda: c.counters.telemetry_duplicates == 1, 10, "the resend was not seen")
        health = c.health()
        assert health["replicas"] == [c.replica_id] and health["messages_for_peers"] == 0
        assert c.db.telemetry_count() == 6 and health["telemetry_rows"] == 6
        assert acks.boots == {boot} and "dev-old" not in acks.seqs                      # never acknowledged
        assert [r["id"] for r in c.db.replica_rows()] == [c.replica_id]
    finally:
        acks.stop()


def test_each_device_message_is_handled_once_and_acknowledged_after_commit(replicas, broker, pg_url):
    serves = replicas(2)
    devices = [f"dev-{i:02d}" for i in range(20)]
    boot, per_device = new_boot_id(), 10
    acks = Acks(broker, FLEET, "replica-test-devices")
    acked = acks.seqs
    try:
        sent = {(d, seq): Telemetry(seq, time.time(), {"inferences": seq}, boot).to_bytes()
                for d in devices for seq in range(per_device)}
        for (d, _seq), payload in sent.items():
            acks.send(d, payload)
        wait_for(lambda: all(sorted(acked[d]) == list(range(per_device)) for d in devices), 15,
                 lambda: dict(acked))
        assert acks.boots == {boot}
        db = FleetDB(pg_url)
        assert db.telemetry_count() == len(sent)
        healths = {s.id: s.health() for s in serves}
        handled = {i: h["messages"]["telemetry"] for i, h in healths.items()}
        assert sum(handled.values()) == len(sent)                        # each message once, not once per replica
        assert sum(h["telemetry_rows"] for h in healths.values()) == len(sent)
        assert sum(h["telemetry_duplicates"] for h in healths.values()) == 0
        assert sum(h["messages_for_peers"] for h in healths.values()) == len(sent)
        owned = collections.Counter(s.id for s in owners(devices, serves).values())
        assert handled == {i: per_device * owned[i] for i in handled} and all(owned.values())

        # a device that missed the ack resends the same bytes: written once, acknowledged again
        acks.clear()
        for d in devices[:5]:
            acks.send(d, sent[(d, 3)])
        wait_for(lambda: all(acked[d] == [3] for d in devices[:5]), 10, lambda: dict(acked))
        assert db.telemetry_count() == len(sent)
        assert sum(s.health()["telemetry_duplicates"] for s in serves) == 5
        db.close()
    finally:
        acks.stop()


def test_a_killed_replicas_devices_finish_their_jobs_on_the_other(replicas, broker, tmp_path):
    serves = replicas(2)
    sims = SimFleet(parse_broker_url(broker.url()), 6, prefix="ota-",
                    options=replace(FLEET_OPTIONS, fleet=FLEET, block_delay_s=0.05, request_timeout_s=1.0))
    own = owners(sims.ids, serves)
    victim = max(serves, key=lambda s: sum(1 for o in own.values() if o is s))
    survivor = next(s for s in serves if s is not victim)
    orphans = [d for d, o in own.items() if o is victim]
    sims.start()
    try:
        assert sims.wait_connected(10)
        wait_for(lambda: {d["device"] for d in survivor.call("GET", "/v1/devices")["devices"]} >= set(sims.ids),
                 10, "devices not recorded")
        art = survivor.call("POST", "/v1/artifacts", upload_body(make_artifact(tmp_path / "v2", version=2,
                                                                               size=300_000)))["artifact"]
        dep = survivor.call("POST", "/v1/deployments", {"artifact": art, "devices": sims.ids, "block_size": 4096})
        dep_id = dep["deployment"]

        def states() -> dict[str, str]:
            return {d["device"]: d["state"] for d in survivor.call("GET", f"/v1/deployments/{dep_id}")["devices"]}
        wait_for(lambda: all(states()[d] == "downloading" for d in orphans), 15, states)
        killed = time.monotonic()
        victim.kill()
        wait_for(lambda: survivor.health()["replicas"] == [survivor.id], 3 * TAKEOVER_BOUND_S, survivor.health)
        takeover = time.monotonic() - killed
        done = wait_for(lambda: (d := survivor.call("GET", f"/v1/deployments/{dep_id}"))["done"] and d, 40, states)
        finished = time.monotonic() - killed
        print(f"\ntakeover after SIGKILL: {takeover:.2f} s (bound {TAKEOVER_BOUND_S:.0f} s); the killed replica's "
              f"{len(orphans)} device(s) finished {finished:.2f} s after the kill")
        assert {d["state"] for d in done["devices"]} == {"healthy"}
        assert all(sims.by_id[d].model.version == 2 for d in sims.ids)
        assert takeover <= TAKEOVER_BOUND_S + SLACK_S
        assert survivor.health()["messages_for_peers"] > 0                    # it did leave them to the victim
        # uploaded through the survivor; the victim served its devices from its cache, filled from the database
        assert all((tmp_path / f"store-{i}" / "artifacts" / art / "model.tflite").exists() for i in (0, 1))
    finally:
        sims.stop()


def test_a_rollout_has_one_driver_and_moves_when_the_driver_dies(replicas, broker, tmp_path, pg_url):
    serves = replicas(2)
    sims = SimFleet(parse_broker_url(broker.url()), 8, prefix="roll-", log_dir=tmp_path / "devlog",
                    options=replace(FLEET_OPTIONS, fleet=FLEET, telemetry_interval_s=0.5))
    db = FleetDB(pg_url)
    driver_log: list[str | None] = []

    def driver() -> str | None:
        (row,) = db.rollout_rows()
        if not driver_log or driver_log[-1] != row["owner"]:
            driver_log.append(row["owner"])
        return row["owner"]
    sims.start()
    try:
        assert sims.wait_connected(10)
        first, other = serves
        wait_for(lambda: {d["device"] for d in first.call("GET", "/v1/devices")["devices"]} >= set(sims.ids),
                 10, "devices not recorded")
        art = first.call("POST", "/v1/artifacts", upload_body(make_artifact(tmp_path / "v2", version=2)))["artifact"]
        rollout = first.call("POST", "/v1/rollouts", {"artifact": art, "devices": sims.ids, "canary": 2,
                                                      "soak_s": 0.5, "rate": 120, "wave_interval_s": 1.0})
        rid = rollout["rollout"]
        assert driver() == first.id
        # pause and resume through the replica that does not drive it
        assert other.call("POST", f"/v1/rollouts/{rid}/pause")["state"] == "paused"
        released = other.call("GET", f"/v1/rollouts/{rid}")["summary"]["released"]
        time.sleep(2.0)                                                         # a wave would be due by now
        view = other.call("GET", f"/v1/rollouts/{rid}")
        assert view["state"] == "paused" and view["summary"]["released"] == released and driver() == first.id
        assert other.call("POST", f"/v1/rollouts/{rid}/resume")["state"] != "paused"
        wait_for(lambda: other.call("GET", f"/v1/rollouts/{rid}")["summary"]["released"] > released, 10,
                 "no wave after the resume")
        assert driver() == first.id
        killed = time.monotonic()
        first.kill()
        wait_for(lambda: driver() == other.id, 3 * ROLLOUT_BOUND_S, "the lease did not move")
        moved = time.monotonic() - killed
        done = wait_for(lambda: (r := other.call("GET", f"/v1/rollouts/{rid}"))["state"] == "completed" and r, 40,
                        lambda: other.call("GET", f"/v1/rollouts/{rid}"))
        print(f"\nrollout lease moved {moved:.2f} s after SIGKILL of its driver (bound {ROLLOUT_BOUND_S:.1f} s)")
        assert done["summary"]["confirmed"] == 8
        assert driver_log == [first.id, other.id]                               # one driver at a time
        jobs = [e for e in read_events(tmp_path / "devlog") if e["event"] == "job" and not e["repeat"]]
        assert sorted(e["device"] for e in jobs) == sorted(sims.ids)           # one install job per device
        assert all(d.model.version == 2 and d.slots.floor == 2 for d in sims.devices)
        assert moved <= ROLLOUT_BOUND_S + SLACK_S
    finally:
        sims.stop()
        db.close()
