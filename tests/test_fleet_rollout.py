"""Staged rollouts: the policy from plain numbers (waves, phases, abort criteria), then the driver in a real
controller with simulated devices over a real Mosquitto (staged jobs, revert and confirm commands, pause,
cancel, a restart in the middle)."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from fleet_helpers import make_artifact, upload_dir, wait_for
from lepton_edge.errors import BadInput
from lepton_edge.fleet.controller import Controller, ControllerOptions, NotFound
from lepton_edge.fleet.rollout import (
    CANARY,
    FINISHING,
    ROLLING,
    SOAKING,
    Released,
    RolloutParams,
    Schedule,
    UpdatedDevice,
    canary_size,
    counter_increase,
    device_phase,
    error_rate,
    evaluate,
    failures,
    min_done,
    next_wave,
    p99_increase,
    percentile,
    releasing_state,
    rollout_order,
    settled_at,
    summarize,
    wave_size,
)
from lepton_edge.mqtt import SessionOptions, parse_broker_url
from lepton_edge.tools.devsim import FACTORY_SHA256, FLEET_OPTIONS, SimFleet, read_events

# --- the policy, from plain numbers --------------------------------------------------------------


def test_order_is_by_sha256_of_the_id_and_canary_counts_round_up():
    ids = [f"dev-{i}" for i in range(50)]
    order = rollout_order(reversed(ids))
    assert order == sorted(ids, key=lambda d: hashlib.sha256(d.encode()).hexdigest())
    assert rollout_order(ids + ids[:3]) == order  # duplicates once
    assert canary_size(RolloutParams(canary=10), 200) == 10
    assert canary_size(RolloutParams(canary=10), 4) == 4
    assert canary_size(RolloutParams(canary_pct=5), 200) == 10
    assert canary_size(RolloutParams(canary_pct=1), 30) == 1      # at least one device
    assert canary_size(RolloutParams(canary_pct=10), 25) == 3     # 2.5 rounds up
    assert canary_size(RolloutParams(), 200) == 0


def test_wave_sizes_follow_rate_interval_and_growth():
    p = RolloutParams(rate=30, wave_interval_s=60)
    assert [wave_size(p, k, 1000) for k in (1, 2, 3)] == [30, 30, 30]
    g = RolloutParams(rate=10, wave_interval_s=30, growth=2)
    assert [wave_size(g, k, 1000) for k in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert wave_size(g, 4, 7) == 7                                # never more than what is left
    assert wave_size(RolloutParams(rate=0.1, wave_interval_s=1), 1, 100) == 1  # at least one
    assert wave_size(RolloutParams(), 1, 190) == 190              # no rate: everything at once
    assert wave_size(RolloutParams(rate=1, growth=10), 5000, 33) == 33  # growth past float range
    assert min_done(RolloutParams(canary=10), 200) == 10
    assert min_done(RolloutParams(rate=12, wave_interval_s=60), 200) == 12
    assert min_done(RolloutParams(min_done=3, canary=10), 200) == 3


def test_params_are_checked_and_survive_a_round_trip():
    p = RolloutParams(canary=5, soak_s=1.5, rate=20, growth=1.5, max_failures_pct=20, max_p99_increase_pct=50)
    assert RolloutParams.from_dict({**p.as_dict(), "from_a_newer_controller": 1}) == p
    for bad in (dict(canary=0), dict(canary_pct=0), dict(canary_pct=101), dict(growth=0.5), dict(rate=0),
                dict(max_error_rate=2), dict(canary=2, canary_pct=5), dict(soak_s=-1), dict(canary=True),
                dict(wave_interval_s=float("nan"))):
        with pytest.raises(BadInput):
            RolloutParams(**bad).check()


def _schedule(**kw) -> Schedule:
    base = dict(selected=100, canary=10, released=0, last_wave=-1, last_released_at=None,
                canary_settled_at=None, all_settled_at=None)
    return Schedule(**{**base, **kw})


def test_the_canary_goes_first_then_waves_at_the_rate():
    p = RolloutParams(canary=10, soak_s=5, rate=60, wave_interval_s=10)
    assert next_wave(p, _schedule(), 0.0) == (0, 10)
    s = _schedule(released=10, last_wave=0, last_released_at=0.0)
    assert next_wave(p, s, 100.0) is None and releasing_state(s, 100.0) == CANARY
    s = _schedule(released=10, last_wave=0, last_released_at=0.0, canary_settled_at=50.0)
    assert next_wave(p, s, 49.0) is None and releasing_state(s, 49.0) == SOAKING
    assert next_wave(p, s, 50.0) == (1, 10)
    s = _schedule(released=20, last_wave=1, last_released_at=50.0, canary_settled_at=50.0)
    assert next_wave(p, s, 59.9) is None and releasing_state(s, 59.9) == ROLLING
    assert next_wave(p, s, 60.0) == (2, 10)
    s = _schedule(released=100, last_wave=9, last_released_at=130.0, all_settled_at=None)
    assert next_wave(p, s, 1e9) is None and releasing_state(s, 1e9) == ROLLING   # jobs still running
    s = _schedule(released=100, last_wave=9, last_released_at=130.0, all_settled_at=140.0)
    assert releasing_state(s, 139.0) == SOAKING and releasing_state(s, 140.0) == FINISHING


def test_without_a_canary_the_first_wave_goes_at_once():
    assert next_wave(RolloutParams(rate=6, wave_interval_s=10), _schedule(canary=0), 0.0) == (1, 1)
    assert next_wave(RolloutParams(), _schedule(canary=0), 0.0) == (1, 100)


def test_soak_counts_from_the_last_healthy_device_once_every_job_is_over():
    healthy = [Released(True, "healthy", 10.0, 10.0), Released(True, "healthy", 12.0, 12.0)]
    assert settled_at(healthy, 5) == 17.0
    assert settled_at([*healthy, Released(True, "downloading", None, None)], 5) is None
    assert settled_at([*healthy, Released(True, "failed", None, 30.0)], 5) == 17.0
    assert settled_at([Released(True, "failed", None, 30.0), Released(True, "expired", None, 31.0)], 5) == 31.0


def test_device_phases_and_summary():
    assert device_phase(None, None, None, ended=False) == "waiting"
    assert device_phase(None, None, None, ended=True) == "skipped"
    assert device_phase("pending", None, None, ended=False) == "updating"
    assert device_phase("downloading", None, None, ended=False) == "updating"
    assert device_phase("healthy", None, None, ended=False) == "healthy"
    assert device_phase("expired", None, None, ended=False) == "failed"
    assert device_phase("rolled_back", None, None, ended=False) == "rolled_back"
    assert device_phase("superseded", None, None, ended=False) == "skipped"
    assert device_phase("superseded", "accepted", None, ended=False) == "reverting"
    assert device_phase("healthy", "healthy", None, ended=True) == "reverted"
    assert device_phase("healthy", "failed", None, ended=True) == "revert_failed"
    assert device_phase("healthy", None, "sent", ended=False) == "confirming"
    assert device_phase("healthy", None, "healthy", ended=True) == "confirmed"
    assert device_phase("healthy", None, "failed", ended=True) == "healthy"
    s = summarize(["confirmed", "healthy", "failed", "waiting", "reverting", "updating"], released=5)
    assert s["selected"] == 6 and s["released"] == 5 and s["healthy"] == 2 and s["confirmed"] == 1
    assert s["in_progress"] == 2 and s["waiting"] == 1 and s["failed"] == 1


def test_max_failures_fires_strictly_above_its_limit_once_enough_are_done():
    p = RolloutParams(max_failures_pct=20)
    assert failures(p, done=9, failed=9, needed=10) is None      # too few done yet
    assert failures(p, done=10, failed=2, needed=10) is None     # 20 % is not more than 20 %
    abort = failures(p, done=10, failed=3, needed=10)
    assert abort is not None and abort.criterion == "max-failures" and abort.value == 30.0 and abort.limit == 20
    assert "3 of 10" in abort.text
    assert failures(RolloutParams(), done=10, failed=10, needed=1) is None


def test_counters_and_percentiles():
    assert counter_increase([10, 20, 35]) == 25
    assert counter_increase([100, 120, 5, 15]) == 20 + 5 + 10   # a restart: the new value is the increase
    assert counter_increase([7]) == 0
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([1, 2], 99) == pytest.approx(1.99)
    assert percentile([5.0], 99) == 5.0


def test_error_rate_and_p99_increase():
    ok = UpdatedDevice(inferences=[0, 100, 200], errors=[0, 1, 2], p99_after=[10, 10], p99_before=[10])
    bad = UpdatedDevice(inferences=[0, 100], errors=[0, 30], p99_after=[10, 10], p99_before=[10])
    assert error_rate(RolloutParams(max_error_rate=0.01), [ok]) is None       # exactly 1 %
    abort = error_rate(RolloutParams(max_error_rate=0.01), [ok, bad])
    assert abort is not None and abort.criterion == "max-error-rate"
    assert abort.value == pytest.approx(32 / 300, abs=1e-6)
    assert error_rate(RolloutParams(max_error_rate=0.01), [UpdatedDevice()]) is None   # nothing counted yet
    few = UpdatedDevice(inferences=[0, 2], errors=[0, 1], p99_after=[10, 10], p99_before=[10])
    assert error_rate(RolloutParams(max_error_rate=0.01), [few]) is None   # 1 of 2 is not a rate yet
    slow = UpdatedDevice(p99_after=[30, 31, 29], p99_before=[10, 10.5])
    p = RolloutParams(max_p99_increase_pct=50)
    abort = p99_increase(p, [slow])
    assert abort is not None and abort.criterion == "max-p99-increase" and abort.value > 150
    assert p99_increase(p, [UpdatedDevice(p99_after=[30], p99_before=[10])]) is None   # one sample after
    assert p99_increase(p, [UpdatedDevice(p99_after=[30, 30], p99_before=[])]) is None  # no baseline
    assert p99_increase(p, [UpdatedDevice(p99_after=[14, 15], p99_before=[10])]) is None  # +49.9 %
    both = RolloutParams(max_failures_pct=10, max_p99_increase_pct=50)
    first = evaluate(both, done=10, failed=5, needed=10, updated=[slow])
    assert first is not None and first.criterion == "max-failures"
    assert evaluate(both, done=10, failed=0, needed=10, updated=[slow]).criterion == "max-p99-increase"


# --- the driver, in a real controller with simulated devices ---------------------------------------

FAST = SessionOptions(clean_start=False, session_expiry_s=600, max_inflight=200, min_backoff_s=0.1,
                      max_backoff_s=1.0)


def start_controller(store: Path, broker, db: str | None = None) -> Controller:
    c = Controller(parse_broker_url(broker.url()), store, db,
                   ControllerOptions(session=FAST, housekeeping_s=0.1, rollout_tick_s=0.1))
    c.start()
    assert c.wait_connected(5), c.mqtt.last_error
    return c


def wait_rollout(c: Controller, rollout_id: str, states: set[str], timeout: float = 30) -> dict:
    return wait_for(lambda: (r := c.rollout(rollout_id))["state"] in states and not r["active"] and r, timeout,
                    f"rollout not {states}: {json.dumps(c.rollout(rollout_id), indent=1)[:3000]}")


@pytest.fixture
def env(tmp_path, broker, fleet_db):
    """A controller (on each store: conftest's fleet_db), a v2 artifact uploaded, and a way to start simulated
    fleets."""
    c = start_controller(tmp_path / "store", broker, fleet_db)
    art = upload_dir(c, make_artifact(tmp_path / "v2", version=2, size=20_000, seed=2))
    fleets: list[SimFleet] = []

    def sim(count: int, **kw) -> SimFleet:
        kw.setdefault("telemetry_interval_s", 0.2)
        f = SimFleet(parse_broker_url(broker.url()), count, log_dir=tmp_path / "devlog", **kw)
        f.start()
        fleets.append(f)
        assert f.wait_connected(10)
        wait_for(lambda: {d["device"] for d in c.devices()} >= set(f.ids), 10, "devices not recorded")
        return f
    ns = SimpleNamespace(c=c, art=art, sim=sim, tmp=tmp_path, broker=broker, db=fleet_db)
    yield ns
    for f in fleets:
        f.stop()
    ns.c.stop()  # a test may have restarted the controller: stop the one running now


def device_events(tmp: Path, event: str) -> list[dict]:
    return [e for e in read_events(tmp / "devlog") if e["event"] == event]


def test_canary_then_waves_then_confirm(env):
    fleet = env.sim(8, tags=lambda i: ("site:a",) if i < 6 else ("site:b",))
    sel = env.c.select_devices([], ["site:a"], False)
    assert sorted(sel.devices) == fleet.ids[:6] and sel.unknown == ()
    params = RolloutParams(canary=2, soak_s=0.3, rate=120, wave_interval_s=0.5, max_failures_pct=20)
    r = env.c.create_rollout(env.art, sel, params)
    assert r["state"] == "canary" and r["waves"][0]["canary"] and r["waves"][0]["devices"] == 2
    assert [d["device"] for d in r["devices"]] == rollout_order(sel.devices)
    assert r["summary"]["released"] == 2 and r["summary"]["waiting"] == 4
    done = wait_rollout(env.c, r["rollout"], {"completed"})
    assert done["summary"]["confirmed"] == 6 and done["abort"] is None
    assert [w["devices"] for w in done["waves"]] == [2, 1, 1, 1, 1]     # 120/min every 0.5 s
    assert all(w["released_at"] > 0 for w in done["waves"])
    times = [w["released_at"] for w in done["waves"]]
    assert all(b - a >= 0.3 for a, b in itertools.pairwise(times))  # the canary soaked, waves spaced
    assert {d["phase"] for d in done["devices"]} == {"confirmed"}
    assert all(d["previous"]["sha256"] == FACTORY_SHA256 for d in done["devices"])
    for d in fleet.devices:
        selected = d.id in sel.devices
        assert (d.model.version == 2 and d.slots.floor == 2) if selected else d.model.version == 1
    jobs = [e for e in device_events(env.tmp, "job") if not e["repeat"]]
    assert sorted(e["device"] for e in jobs) == sorted(sel.devices) and all(e["staged"] for e in jobs)
    confirms = [e for e in device_events(env.tmp, "command") if not e["repeat"]]
    assert sorted(e["device"] for e in confirms) == sorted(sel.devices)
    assert {e["action"] for e in confirms} == {"confirm"}
    listed = env.c.rollouts()
    assert [x["rollout"] for x in listed] == [r["rollout"]] and "devices" not in listed[0]


def test_failures_in_the_canary_abort_and_the_updated_devices_go_back(env):
    fleet = env.sim(10, fail={0, 1, 2, 3, 4})
    order = rollout_order(fleet.ids)
    canary = order[:4]
    failing = {fleet.devices[i].id for i in range(5)}
    assert 0 < len(failing & set(canary)) < 4, "the canary needs failing and passing devices"
    r = env.c.create_rollout(env.art, fleet.ids, RolloutParams(canary=4, soak_s=60, max_failures_pct=20))
    done = wait_rollout(env.c, r["rollout"], {"aborted"})
    assert done["abort"]["criterion"] == "max-failures" and done["abort"]["limit"] == 20
    assert done["abort"]["value"] == 100 * len(failing & set(canary)) / 4
    phases = {d["device"]: d["phase"] for d in done["devices"]}
    for device in canary:
        assert phases[device] == ("rolled_back" if device in failing else "reverted")
    assert all(phases[d] == "skipped" for d in order[4:])
    for d in fleet.devices:
        assert d.model.sha256 == FACTORY_SHA256 and d.slots.floor == 1   # every one runs its old model
    jobs = {e["device"] for e in device_events(env.tmp, "job")}
    assert jobs == set(canary)                                             # nobody past the canary
    reverts = [e for e in device_events(env.tmp, "command") if not e["repeat"]]
    assert sorted(e["device"] for e in reverts) == sorted(set(canary) - failing)
    assert all(e["action"] == "revert" and e["sha256"] == FACTORY_SHA256 for e in reverts)


def test_pause_resume_and_cancel(env):
    fleet = env.sim(6)
    r = env.c.create_rollout(env.art, fleet.ids, RolloutParams(canary=1, soak_s=0.2, rate=60, wave_interval_s=1))
    rid = r["rollout"]
    wait_for(lambda: env.c.rollout(rid)["summary"]["healthy"] == 1, 15, "canary not healthy")
    paused = env.c.rollout_action(rid, "pause")
    assert paused["state"] == "paused"
    assert env.c.rollout_action(rid, "pause")["state"] == "paused"   # again: nothing changes
    time.sleep(1.5)
    assert env.c.rollout(rid)["summary"]["released"] == 1            # no wave while paused
    assert env.c.rollout_action(rid, "resume")["state"] in ("soaking", "rolling")
    wait_for(lambda: env.c.rollout(rid)["summary"]["released"] >= 2, 10, "no wave after resume")
    cancelled = env.c.rollout_action(rid, "cancel")
    assert cancelled["state"] == "cancelled"
    done = wait_rollout(env.c, rid, {"cancelled"})
    released = done["summary"]["released"]
    assert released < 6 and done["summary"]["confirmed"] == done["summary"]["healthy"] == released
    assert done["summary"]["skipped"] == 6 - released
    with pytest.raises(BadInput, match="cancelled"):
        env.c.rollout_action(rid, "resume")
    with pytest.raises(BadInput, match="unknown rollout action"):
        env.c.rollout_action(rid, "explode")
    with pytest.raises(NotFound):
        env.c.rollout("0123456789abcdef")


def test_a_device_in_a_running_rollout_cannot_join_another(env):
    fleet = env.sim(3)
    env.c.create_rollout(env.art, fleet.ids[:2], RolloutParams(canary=1, soak_s=60))
    with pytest.raises(BadInput, match="still running"):
        env.c.create_rollout(env.art, fleet.ids[1:], RolloutParams())
    with pytest.raises(BadInput, match="at least one device"):
        env.c.create_rollout(env.art, [], RolloutParams())
    with pytest.raises(NotFound):
        env.c.create_rollout("ab" * 32, fleet.ids[2:], RolloutParams())
    sel = env.c.select_devices(["never-seen", fleet.ids[2]], [], False)
    assert sel.devices == ("never-seen", fleet.ids[2]) and sel.unknown == ("never-seen",)
    assert env.c.select_devices([], ["no:such-tag"], False).devices == ()
    assert sorted(env.c.select_devices([], [], True).devices) == fleet.ids


def test_a_restarted_controller_carries_on_without_a_second_job(env):
    fleet = env.sim(6)
    params = RolloutParams(canary=2, soak_s=0.2, rate=60, wave_interval_s=1.0)
    rid = env.c.create_rollout(env.art, fleet.ids, params)["rollout"]
    wait_for(lambda: env.c.rollout(rid)["summary"]["released"] >= 3, 20, "no wave after the canary")
    env.c.stop()
    env.c = start_controller(env.tmp / "store", env.broker, env.db)
    done = wait_rollout(env.c, rid, {"completed"})
    assert done["summary"]["confirmed"] == 6
    jobs = [e for e in device_events(env.tmp, "job") if not e["repeat"]]
    assert sorted(e["device"] for e in jobs) == sorted(fleet.ids)       # one job per device, ever
    assert len({e["job"] for e in jobs}) == 6
    assert all(d.model.version == 2 and d.slots.floor == 2 for d in fleet.devices)


def test_an_abort_reverts_devices_in_the_middle_of_their_download(env, tmp_path):
    fast = env.sim(1, fail={0})                                        # fails at once
    slow = env.sim(3, start=1, options=replace(FLEET_OPTIONS, block_delay_s=0.3, request_timeout_s=1.0),
                   telemetry_interval_s=0.5)
    big = upload_dir(env.c, make_artifact(tmp_path / "big", version=3, size=300_000, seed=5))
    params = RolloutParams(canary=4, soak_s=60, max_failures_pct=20, min_done=1)
    r = env.c.create_rollout(big, fast.ids + slow.ids, params)
    done = wait_rollout(env.c, r["rollout"], {"aborted"})
    assert done["abort"]["criterion"] == "max-failures" and done["abort"]["value"] == 100.0
    phases = {d["device"]: d for d in done["devices"]}
    assert phases[fast.ids[0]]["phase"] == "rolled_back"
    for device in slow.ids:   # their install gave way to the revert, which found them on their old model
        assert phases[device]["phase"] == "reverted" and phases[device]["state"] == "superseded"
        assert phases[device]["command"]["action"] == "revert" and phases[device]["command"]["state"] == "healthy"
    assert all(d.model.sha256 == FACTORY_SHA256 and d.slots.floor == 1 for d in slow.devices)
    assert all(not d.ota.machine.busy for d in slow.devices)          # no download left running


def test_erroring_updated_devices_abort_on_the_error_rate(env):
    fleet = env.sim(4, erroring={0, 1, 2, 3}, error_fraction=0.3)
    params = RolloutParams(canary=2, soak_s=60, max_error_rate=0.05)
    r = env.c.create_rollout(env.art, fleet.ids, params)
    done = wait_rollout(env.c, r["rollout"], {"aborted"})
    assert done["abort"]["criterion"] == "max-error-rate" and done["abort"]["limit"] == 0.05
    assert 0.05 < done["abort"]["value"] <= 1 and "inferences" in done["abort"]["text"]
    assert [d["phase"] for d in done["devices"]] == ["reverted", "reverted", "skipped", "skipped"]
    assert {d.model.sha256 for d in fleet.devices} == {FACTORY_SHA256}
