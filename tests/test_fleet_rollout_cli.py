"""`lepton-edge deploy` with selections and rollout flags, and `lepton-edge rollout`, as a user runs them:
the CLI in a subprocess against a real controller (with its HTTP API) and simulated devices on a real Mosquitto."""

from __future__ import annotations

import json
import subprocess
import time
from types import SimpleNamespace

import pytest

from conftest import assert_one_line_error, run_cli, run_on_a_terminal
from fleet_helpers import api, make_artifact, wait_for
from lepton_edge.fleet.controller import Controller, ControllerOptions
from lepton_edge.fleet.http_api import HttpApi, HttpListen
from lepton_edge.fleet.rollout import rollout_order
from lepton_edge.mqtt import SessionOptions, parse_broker_url
from lepton_edge.tools.devsim import FACTORY_SHA256, SimFleet, device_id
from mosquitto import free_port

FAST = SessionOptions(clean_start=False, session_expiry_s=600, max_inflight=200, min_backoff_s=0.1,
                      max_backoff_s=1.0)
NOWHERE = "http://127.0.0.1:9"  # bad input is refused before the controller is asked


@pytest.fixture
def env(tmp_path, broker, fleet_db):
    """A controller with its HTTP API (on each store: conftest's fleet_db), a version-2 artifact on disk, and
    ``sim(count, **SimFleet options)``."""
    c = Controller(parse_broker_url(broker.url()), tmp_path / "store", fleet_db,
                   ControllerOptions(session=FAST, housekeeping_s=0.1, rollout_tick_s=0.1))
    c.start()
    assert c.wait_connected(5), c.mqtt.last_error
    http = HttpApi(c, HttpListen("127.0.0.1", 0), None)
    http.start()
    fleets: list[SimFleet] = []

    def sim(count: int, **kw) -> SimFleet:
        f = SimFleet(parse_broker_url(broker.url()), count, telemetry_interval_s=0.5, **kw)
        f.start()
        fleets.append(f)
        assert f.wait_connected(10)
        wait_for(lambda: {d["device"] for d in c.devices()} >= set(f.ids), 10, "devices not recorded")
        return f

    art = make_artifact(tmp_path / "v2", version=2, size=20_000, seed=2)
    yield SimpleNamespace(c=c, url=http.url, sim=sim, art=art)
    for f in fleets:
        f.stop()
    http.stop()
    c.stop()


def deploy(env, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return run_cli("deploy", env.art, "--controller", env.url, *args, timeout=timeout)


def rollout(env, *args: str) -> subprocess.CompletedProcess:
    return run_cli("rollout", *args, "--controller", env.url, timeout=60)


def test_deploy_selects_by_tags_warns_about_unknown_devices_and_refuses_an_empty_selection(env):
    berlin = env.sim(3, prefix="ber-", tags=("site:berlin", "hw:pi4"))
    paris = env.sim(2, prefix="par-", tags=("site:paris", "hw:pi4"))
    proc = deploy(env, "--tag", "site:berlin", "--tag", "hw:pi4", "--wait", "--timeout", "30", "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    result = json.loads(proc.stdout)
    assert sorted(d["device"] for d in result["devices"]) == berlin.ids          # every tag must match
    assert result["state"] == "completed" and result["ok"] is True and result["unknown_devices"] == []
    assert {d.model.version for d in berlin.devices} == {2} and {d.model.version for d in paris.devices} == {1}

    # a rollout this time, not followed; a device never seen is selected (its job waits for it) with a warning
    proc = deploy(env, "--tag", "site:paris", "--device", "ghost-7", "--canary", "1", "--soak", "600", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["warning: device ghost-7 has never been seen by the controller; "
                                        "its job waits for it"]
    result = json.loads(proc.stdout)
    assert sorted(d["device"] for d in result["devices"]) == ["ghost-7", *paris.ids]
    assert result["unknown_devices"] == ["ghost-7"] and result["state"] == "canary"
    assert result["ok"] is None and result["waited"] is False and result["timed_out"] is False

    line = assert_one_line_error(deploy(env, "--tag", "site:mars", "--canary", "1"), 2)
    assert "(tag site:mars) matches no device the controller knows" in line
    status, body = api(env.url, "POST", "/v1/deployments", {"artifact": "ab" * 32, "tags": ["site:mars"]})
    assert status == 400 and "matches no device" in body["error"]


@pytest.mark.parametrize("args, expected", [
    ((), "select devices with --device ID, --tag TAG or --all"),
    (("--all", "--tag", "site:a"), "--all selects every device"),
    (("--tag", "two words"), "--tag 'two words'"),
    (("--all", "--canary", "0"), "--canary must be a whole number of devices, 1 or more"),
    (("--all", "--canary", "150%"), "--canary must be a percentage above 0 and at most 100"),
    (("--all", "--canary", "ten"), "--canary 'ten': expected a whole number of devices or a percentage"),
    (("--all", "--growth", "2"), "--growth needs --rate"),
    (("--all", "--max-failures", "120%"), "--max-failures must be a percentage from 0 to 100"),
    (("--all", "--max-error-rate", "2"), "--max-error-rate must be a fraction from 0 to 1"),
    (("--all", "--canary", "2", "--rate", "-1"), "--rate must be a number of devices per minute above 0"),
])
def test_bad_selections_and_rollout_flags_are_one_line_errors(tmp_path, args, expected):
    art = make_artifact(tmp_path / "art", size=1000)
    line = assert_one_line_error(run_cli("deploy", art, "--controller", NOWHERE, *args), 2)
    assert line.startswith("lepton-edge deploy: error: ") and expected in line


def test_rollout_list_show_pause_resume_cancel_round_trip(env):
    fleet = env.sim(4, prefix="rt-")
    empty = rollout(env, "list")
    assert empty.returncode == 0 and empty.stdout.strip() == "(no rollouts)"
    proc = deploy(env, "--all", "--canary", "1", "--soak", "600", "--max-failures", "50%", "--wait", "--timeout", "1",
                  "--json")  # the controller goes on after --timeout
    line = assert_one_line_error(proc, 1)
    made = json.loads(proc.stdout)
    rid = made["rollout"]
    assert made["timed_out"] is True and made["ok"] is False and made["abort"] is None
    assert made["state"] in ("canary", "soaking")
    assert f"rollout {rid} is still {made['state']} after the timeout" in line and "rollout show" in line
    assert made["params"]["canary"] == 1 and made["params"]["max_failures_pct"] == 50
    assert [d["device"] for d in made["devices"]] == rollout_order(fleet.ids)

    listed = rollout(env, "list")
    assert listed.returncode == 0
    header, _rule, row = listed.stdout.splitlines()
    assert header.split()[:3] == ["rollout", "model", "state"]
    assert row.split()[:3] == [rid, "sim-model", "v2"] and row.split()[3] in ("canary", "soaking")
    assert [r["rollout"] for r in json.loads(rollout(env, "list", "--json").stdout)["rollouts"]] == [rid]

    wait_for(lambda: env.c.rollout(rid)["summary"]["healthy"] == 1, 20, lambda: env.c.rollout(rid))
    shown = rollout(env, "show", rid)
    assert shown.returncode == 0, shown.stderr
    assert f"rollout {rid}: sim-model version 2" in shown.stdout and "state: soaking" in shown.stdout
    assert "flags: --canary 1 --soak 600 --max-failures 50%" in shown.stdout
    canary = rollout_order(fleet.ids)[0]
    rows = {line.split()[0]: line.split()[1:3] for line in shown.stdout.splitlines() if line.split()[:1] and
            line.split()[0] in fleet.ids}
    assert rows == {d: (["0", "healthy"] if d == canary else ["-", "waiting"]) for d in fleet.ids}, shown.stdout

    for action, state in (("pause", "paused"), ("resume", "soaking"), ("cancel", "cancelled")):
        proc = rollout(env, action, rid)
        assert proc.returncode == 0 and proc.stdout.strip() == f"rollout {rid}: {state}", (proc.stdout, proc.stderr)
        assert json.loads(rollout(env, "show", rid, "--json").stdout)["state"] == state
    line = assert_one_line_error(rollout(env, "resume", rid), 2)
    assert line.startswith("lepton-edge rollout: error: the controller said:") and "cancelled" in line
    line = assert_one_line_error(rollout(env, "show", "0123456789abcdef"), 2)
    assert "no such rollout" in line
    assert "expected the hex id" in assert_one_line_error(rollout(env, "pause", "../devices"), 2)

    # the API's own checks name the field
    for body, words in (({"all": True, "canary_pct": 0}, "'canary_pct' must be a percentage above 0"),
                        ({"all": True, "canray": 1}, "unknown field 'canray'"),
                        ({"all": True, "tags": ["a"]}, "'all' selects every device"),
                        ({"devices": "rt-00000"}, "'devices' must be a list")):
        status, answer = api(env.url, "POST", "/v1/rollouts", {"artifact": made["artifact"], **body})
        assert status == 400 and words in answer["error"], answer


def test_deploy_wait_follows_a_rollout_to_completed_exit_0_or_aborted_exit_1(env):
    good = env.sim(4, prefix="ok-", tags=("site:ok",))
    code, out, terminal = run_on_a_terminal("deploy", str(env.art), "--controller", env.url, "--tag", "site:ok",
                                            "--canary", "1", "--soak", "0", "--max-failures", "20%", "--wait",
                                            "--timeout", "60", "--json")
    assert code == 0, terminal
    result = json.loads(out)
    assert result["state"] == "completed" and result["abort"] is None and result["ok"] is True
    assert {d["phase"] for d in result["devices"]} == {"confirmed"} and len(result["devices"]) == 4
    assert {(d.model.version, d.slots.floor) for d in good.devices} == {(2, 2)}
    assert f"rollout {result['rollout']}: " in terminal and "wave 0 (canary): 1 device(s)" in terminal
    assert "\x1b[J" in terminal and "completed" in terminal  # redrawn in place until the end

    # a canary of two, one of which fails its update: 50 % > 20 %, abort, the other one goes back
    ids = [device_id("bad-", i) for i in range(6)]
    first = rollout_order(ids)[0]
    bad = env.sim(6, prefix="bad-", tags=("site:bad",), fail={ids.index(first)})
    proc = deploy(env, "--tag", "site:bad", "--canary", "2", "--soak", "60", "--max-failures", "20%", "--wait",
                  "--timeout", "60", "--json")
    line = assert_one_line_error(proc, 1)
    result = json.loads(proc.stdout)
    rid = result["rollout"]
    assert result["state"] == "aborted" and result["ok"] is False and result["timed_out"] is False
    assert {k: result["abort"][k] for k in ("criterion", "value", "limit")} == \
        {"criterion": "max-failures", "value": 50.0, "limit": 20.0}
    phases = {d["device"]: d["phase"] for d in result["devices"]}
    second = rollout_order(ids)[1]
    assert phases[first] == "rolled_back" and phases[second] == "reverted"
    assert sorted(d for d, p in phases.items() if p == "skipped") == sorted(set(ids) - {first, second})
    assert {d.model.sha256 for d in bad.devices} == {FACTORY_SHA256}  # every device runs its old model
    assert line == (f"lepton-edge deploy: error: rollout {rid} aborted: 1 of 2 devices done failed or rolled back "
                    "(50.0 %), more than the limit of 20 %; 1 device(s) reverted")
    shown = rollout(env, "show", rid).stdout
    assert "state: aborted: 1 of 2 devices done failed or rolled back (50.0 %)" in shown
    table = deploy(env, "--tag", "site:bad", "--canary", "2", "--max-failures", "20%", "--wait", "--timeout", "60")
    assert table.returncode == 1 and "state: aborted: 1 of 2 devices done failed" in table.stdout


def test_rollout_commands_give_up_on_an_unreachable_controller_in_bounded_time():
    started = time.monotonic()
    proc = run_cli("rollout", "list", "--controller", f"http://127.0.0.1:{free_port()}", "--connect-timeout", "1")
    line = assert_one_line_error(proc, 1)
    assert "cannot reach the controller" in line and "connection refused" in line
    assert time.monotonic() - started < 15


def test_several_controllers_the_next_is_used_when_one_does_not_answer(env):
    env.sim(3, prefix="multi-")
    dead = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("deploy", env.art, "--controller", dead, "--controller", env.url, "--all", "--wait", "--json",
                   timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert {d["state"] for d in json.loads(proc.stdout)["devices"]} == {"healthy"}
    listed = run_cli("rollout", "list", "--controller", dead, "--controller", env.url, "--json", timeout=60)
    assert listed.returncode == 0, listed.stderr
    other = f"http://127.0.0.1:{free_port()}"
    line = assert_one_line_error(run_cli("rollout", "list", "--controller", dead, "--controller", other,
                                         "--connect-timeout", "1"), 1)
    assert dead in line and other in line and "cannot reach the controller" in line
