"""Acceptance: the rollout scenarios of issue 11, with simulated fleets over a real Mosquitto.

* 200 devices, 10 % failing: a canary of 10 and max-failures 20 % runs to the end;
* the same rollout with 50 % failing aborts in the canary, and every updated device runs its old model again;
* every updated device 3x slower: aborts on max-p99-increase although every install succeeded;
* ``lepton-edge fleet serve`` SIGKILLed in the middle of a wave and started again on the same store finishes
  the rollout, and no device starts the same job twice (counted from the devices' own logs).

Short soaks and wave intervals keep the run short; which devices fail is fixed by the simulator's seed, and
the set-up checks what the seed gives (the rollout order is deterministic too).
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import REPO
from fleet_helpers import api, make_artifact, upload_body, upload_dir, wait_for
from lepton_edge.fleet.controller import Controller, ControllerOptions
from lepton_edge.fleet.rollout import RolloutParams, canary_size, rollout_order, wave_size
from lepton_edge.mqtt import SessionOptions, parse_broker_url
from lepton_edge.tools.devsim import FACTORY_SHA256, FLEET_OPTIONS, SimFleet, device_id, plan_fleet, read_events

FAST = SessionOptions(clean_start=False, session_expiry_s=600, max_inflight=200, min_backoff_s=0.1,
                      max_backoff_s=1.0)
SEED = 0
# 200 devices: canary 10, then waves every second growing 1.5x from 10 devices (10, 15, 22, 34, 51, 58)
BIG = RolloutParams(canary=10, soak_s=1.0, rate=600, growth=1.5, wave_interval_s=1.0, max_failures_pct=20)


def waves(params: RolloutParams, order: list[str]) -> list[list[str]]:
    """The devices of each wave, as the policy releases them."""
    n, c = len(order), canary_size(params, len(order))
    out, pos, k = [order[:c]], c, 1
    while pos < n:
        size = wave_size(params, k, n - pos)
        out.append(order[pos:pos + size])
        pos, k = pos + size, k + 1
    return out


def worst_failure_share(plan: list[list[str]], failing: set[str]) -> float:
    """The highest failed/done share max-failures can see if each wave ends before the next starts and
    a wave's failing devices finish first: the canary alone, then every earlier wave plus them."""
    worst, done, failed = 0.0, 0, 0
    for k, wave in enumerate(plan):
        f = sum(d in failing for d in wave)
        worst = max(worst, f / len(wave) if k == 0 else (failed + f) / (done + f))
        done, failed = done + len(wave), failed + f
    return worst


def in_process(tmp: Path, broker, db: str | None) -> Controller:
    c = Controller(parse_broker_url(broker.url()), tmp / "store", db,
                   ControllerOptions(session=FAST, housekeeping_s=0.2))
    c.start()
    assert c.wait_connected(5), c.mqtt.last_error
    return c


def start_fleet(broker, n: int, c: Controller | None, **kw) -> SimFleet:
    fleet = SimFleet(parse_broker_url(broker.url()), n, **kw)
    fleet.start()
    assert fleet.wait_connected(30)
    if c is not None:
        wait_for(lambda: len(c.devices()) >= n, 30, "not every device recorded")
    return fleet


def wait_end(c: Controller, rollout_id: str, timeout: float = 60) -> dict:
    return wait_for(lambda: (r := c.rollout(rollout_id))["state"] in ("completed", "aborted", "cancelled")
                    and not r["active"] and r, timeout,
                    lambda: json.dumps({k: v for k, v in c.rollout(rollout_id).items() if k != "devices"}))


@pytest.fixture
def big(tmp_path, broker, fleet_db):
    """An in-process controller on each store (conftest's fleet_db), a v2 artifact uploaded, the fleets to stop."""
    c = in_process(tmp_path, broker, fleet_db)
    art = upload_dir(c, make_artifact(tmp_path / "v2", version=2, size=20_000, seed=2))
    fleets: list[SimFleet] = []
    yield c, art, fleets
    for f in fleets:
        f.stop()
    c.stop()


@pytest.mark.parametrize("fail_rate", [0.1, 0.5])
def test_200_devices_with_failing_updates(big, broker, tmp_path, fail_rate):
    c, art, fleets = big
    ids = [device_id("sim-", i) for i in range(200)]
    fail = plan_fleet(200, 1, fail_rate=fail_rate, seed=SEED).fail
    failing = {ids[i] for i in fail}
    plan = waves(BIG, rollout_order(ids))
    canary_failing = sum(d in failing for d in plan[0])
    if fail_rate == 0.1:  # what the seed gives: the canary and every wave stay under the limit
        assert canary_failing == 1 and worst_failure_share(plan, failing) < 0.2
    else:                 # the canary alone goes over it
        assert canary_failing / len(plan[0]) > 0.2
    fleets.append(start_fleet(broker, 200, c, fail=fail, telemetry_interval_s=2.0, log_dir=tmp_path / "log"))
    r = c.create_rollout(art, c.select_devices([], [], True), BIG)
    done = wait_end(c, r["rollout"])
    phases = collections.Counter(d["phase"] for d in done["devices"])
    models = {d.id: d.model.sha256 for d in fleets[0].devices}
    if fail_rate == 0.1:
        assert done["state"] == "completed" and done["abort"] is None
        assert phases == {"confirmed": 180, "rolled_back": 20}
        assert [w["devices"] for w in done["waves"]] == [len(w) for w in plan]
        assert all(models[d] == FACTORY_SHA256 for d in failing)
        assert all(d.model.version == 2 and d.slots.floor == 2 for d in fleets[0].devices if d.id not in failing)
    else:
        assert done["state"] == "aborted" and done["abort"]["criterion"] == "max-failures"
        assert done["abort"]["value"] == 100 * canary_failing / 10 and done["abort"]["limit"] == 20
        assert [w["wave"] for w in done["waves"]] == [0]           # it never left the canary
        assert phases == {"rolled_back": canary_failing, "reverted": 10 - canary_failing, "skipped": 190}
        assert set(models.values()) == {FACTORY_SHA256}            # every device runs its old model again
        assert all(d.slots.floor == 1 for d in fleets[0].devices)
        jobs = {e["device"] for e in read_events(tmp_path / "log") if e["event"] == "job"}
        assert jobs == set(plan[0])


def test_slower_updated_devices_abort_on_p99(big, broker, tmp_path):
    c, art, fleets = big
    n = 20
    slow = plan_fleet(n, 1, slow_rate=1.0, seed=SEED).slow
    fleets.append(start_fleet(broker, n, c, slow=slow, slow_factor=3.0, telemetry_interval_s=0.3))
    wait_for(lambda: all(d["telemetry"] for d in c.devices()), 10, "no telemetry before the update")
    params = RolloutParams(canary=5, soak_s=30, max_failures_pct=20, max_p99_increase_pct=50)
    r = c.create_rollout(art, [d.id for d in fleets[0].devices], params)
    done = wait_end(c, r["rollout"])
    assert done["state"] == "aborted" and done["abort"]["criterion"] == "max-p99-increase"
    assert 150 < done["abort"]["value"] < 250 and done["abort"]["limit"] == 50   # 3x slower: about +200 %
    canary = [d for d in done["devices"] if d["wave"] == 0]
    assert len(canary) == 5 and all(d["state"] == "healthy" for d in canary)  # every install succeeded
    assert all(d["phase"] == "reverted" for d in canary)
    assert {d.model.sha256 for d in fleets[0].devices} == {FACTORY_SHA256}


def _serve(tmp: Path, broker, log, db: str | None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lepton_edge", "fleet", "serve", "--broker", broker.url(), "--store",
         str(tmp / "store"), *(["--db", db] if db else []), "--http", "127.0.0.1:0", "--block-size", "16384"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
    assert m, line
    return proc, m.group(1)


def test_a_controller_killed_mid_wave_finishes_the_rollout(tmp_path, broker, fleet_db):
    n = 40
    options = replace(FLEET_OPTIONS, block_delay_s=0.15, request_timeout_s=1.0, session=FAST)
    fleet = start_fleet(broker, n, None, options=options, telemetry_interval_s=1.0, log_dir=tmp_path / "log")
    log = open(tmp_path / "serve.log", "w")  # both controllers write it
    procs = []
    try:
        proc, url = _serve(tmp_path, broker, log, fleet_db)
        procs.append(proc)
        status, art = api(url, "POST", "/v1/artifacts",
                          upload_body(make_artifact(tmp_path / "v2", version=2, size=200_000, seed=3)))
        assert status == 201, art
        wait_for(lambda: len(api(url, "GET", "/v1/devices")[1]["devices"]) == n, 20, "devices not recorded")
        status, r = api(url, "POST", "/v1/rollouts", {"artifact": art["artifact"], "all": True, "canary": 4,
                                                      "soak_s": 0.5, "rate": 600, "wave_interval_s": 1.0})
        assert status == 201, r
        rid = r["rollout"]

        def mid_wave():
            got = api(url, "GET", f"/v1/rollouts/{rid}")[1]
            return len(got["waves"]) >= 2 and got["summary"]["in_progress"] >= 3 and got
        before = wait_for(mid_wave, 30, "never caught a wave in flight")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert before["summary"]["waiting"] > 0               # waves still to come
        proc, url = _serve(tmp_path, broker, log, fleet_db)
        procs.append(proc)
        done = wait_for(lambda: (got := api(url, "GET", f"/v1/rollouts/{rid}")[1])["state"] == "completed"
                        and not got["active"] and got, 60, "the restarted controller did not finish")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(10)
        fleet.stop()
        log.close()
    assert done["summary"]["confirmed"] == n
    events = read_events(tmp_path / "log")
    started = collections.defaultdict(list)
    for e in events:
        if e["event"] == "job" and not e["repeat"]:
            started[e["device"]].append(e["job"])
    assert sorted(started) == sorted(fleet.ids)
    assert all(len(jobs) == 1 for jobs in started.values()), {d: j for d, j in started.items() if len(j) > 1}
    resent = [e for e in events if e["event"] == "job" and e["repeat"]]
    assert all(e["job"] in started[e["device"]] for e in resent)  # anything sent again was the same job
    healthy = collections.Counter(e["device"] for e in events if e["event"] == "state" and e["state"] == "healthy"
                                  and e["job"] in started[e["device"]])
    assert set(healthy) == set(fleet.ids)
    assert all(d.model.version == 2 and d.slots.floor == 2 for d in fleet.devices)
