"""Staged rollouts on the device: the floor held after a staged update, then ``revert`` or ``confirm``.

The agent (lepton_edge.agent.daemon.Agent with its MQTT link) runs in this process against a real
Mosquitto; :class:`RolloutStandIn` plays the controller's part of a staged rollout on the wire (the
jobs and commands of docs/MQTT.md, the blocks asked for), so these tests need nothing of the
controller's rollout code. Real MLPerf Tiny models, real files; the crash test SIGKILLs a process.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agent_helpers import child_env, write_config
from conftest import REPO
from lepton_edge.agent.config import load_config
from lepton_edge.agent.daemon import Agent
from lepton_edge.agent.mqtt_link import LinkOptions, start_mqtt
from lepton_edge.agent.policy import InstallPolicy
from lepton_edge.agent.store import ModelStore
from lepton_edge.agent.update import OtaOptions
from lepton_edge.artifact import load_artifact, load_public_key
from lepton_edge.mqtt import (
    CONFIRM,
    REVERT,
    Block,
    BlockRequest,
    DeviceTopics,
    MqttClient,
    OtaCommand,
    OtaJob,
    Progress,
    SessionOptions,
    Status,
    new_job_id,
    parse_broker_url,
)

FLEET, DEVICE = "staged-fleet", "staged-device"
TAGS = ["site:berlin", "hw:pi4"]
FAST = SessionOptions(max_queued=1000, min_backoff_s=0.1, max_backoff_s=1.0)
TERMINAL = {"healthy", "rolled_back", "failed"}


def sha(artifact: Path) -> str:
    return json.loads((artifact / "manifest.json").read_text())["model"]["sha256"]


class RolloutStandIn:
    """The controller's side of a staged rollout for one device, over a real broker: ``ota/job`` with
    updates and commands, blocks served on ``ota/get``, every ``ota/progress`` and ``status`` kept."""

    def __init__(self, broker, fleet: str = FLEET, device: str = DEVICE) -> None:
        self.topics = DeviceTopics(fleet, device)
        self.models: dict[str, tuple[bytes, bytes]] = {}     # job -> (sha256 prefix, model bytes)
        self.progress: list[Progress] = []
        self.statuses: list[Status] = []
        self.requests: Counter[str] = Counter()              # job -> block requests
        self.client = MqttClient(parse_broker_url(broker.url()), f"stand-in-{device}")
        self.client.subscribe(self.topics.ota_get, self._on_get)
        self.client.subscribe(self.topics.ota_progress, lambda _t, p: self.progress.append(Progress.from_bytes(p)))
        self.client.subscribe(self.topics.status, lambda _t, p: self.statuses.append(Status.from_bytes(p)))
        self.client.start()
        assert self.client.wait_connected(5)

    def _on_get(self, _topic: str, payload: bytes) -> None:
        req = BlockRequest.from_bytes(payload)
        self.requests[req.job] += 1
        prefix, model = self.models[req.job]
        block = Block(req.job, prefix, req.offset, model[req.offset:req.offset + req.length])
        self.client.publish(self.topics.ota_data, block.to_bytes(), qos=1)

    def send_job(self, artifact: Path, *, staged: bool, block_size: int = 16384) -> str:
        model = (artifact / "model.tflite").read_bytes()
        signature = (artifact / "manifest.sig").read_bytes()
        job = new_job_id()
        self.models[job] = (bytes.fromhex(sha(artifact)[:16]), model)
        message = OtaJob(job, "rollout-wave-1", (artifact / "manifest.json").read_bytes(), signature, sha(artifact),
                         len(model), block_size, time.time() + 3600, time.time(), staged=staged)
        self.client.publish(self.topics.ota_job, message.to_bytes(), qos=1)
        return job

    def send_command(self, action: str, sha256: str | None, job: str | None = None) -> str:
        job = job or new_job_id()
        self.client.publish(self.topics.ota_job, OtaCommand(job, "rollout", action, sha256, time.time()).to_bytes())
        return job

    def reports(self, job: str) -> list[Progress]:
        return [p for p in list(self.progress) if p.job == job]

    def wait_done(self, job: str, count: int = 1, timeout: float = 30.0) -> list[Progress]:
        """Every report of ``job`` once ``count`` terminal ones have come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reports = self.reports(job)
            if sum(p.state in TERMINAL for p in reports) >= count:
                return reports
            time.sleep(0.02)
        raise AssertionError(f"job {job[:8]}: {[(p.state, p.reason) for p in self.reports(job)]}")

    def wait_status(self, predicate, timeout: float = 10.0) -> Status:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.statuses and predicate(self.statuses[-1]):
                return self.statuses[-1]
            time.sleep(0.02)
        raise AssertionError(f"no such status; the last: {self.statuses[-1:]}")

    def close(self) -> None:
        self.client.stop()


@pytest.fixture
def stand_in(broker):
    s = RolloutStandIn(broker)
    yield s
    s.close()


@pytest.fixture
def staged_agent(tmp_path, broker, signing):
    """``start(model=None, ota=OtaOptions()) -> (agent, link)``: the agent in this process, with tags."""
    started = []

    def start(model: Path | None = None, ota: OtaOptions = OtaOptions()):
        config = write_config(tmp_path / "agent.toml", store=tmp_path / "store", trusted_keys=[signing[1]],
                              device_id=DEVICE, fleet=FLEET,
                              extra=f'\n[mqtt]\nbroker = "{broker.url()}"\nkeepalive = 10\n')
        text = config.read_text().replace('profile = "raspberry-pi-4"\n',
                                          f'profile = "raspberry-pi-4"\ntags = {json.dumps(TAGS)}\n', 1)
        config.write_text(text)
        agent = Agent(load_config(config))
        agent.start(model_path=model)
        link = start_mqtt(agent, LinkOptions(telemetry_interval_s=0, ota=ota, session=FAST))
        started.append((agent, link))
        assert link.client.wait_connected(5)
        return agent, link
    yield start
    for agent, link in started:
        link.stop()
        agent.stop()


def states(reports: list[Progress]) -> list[str]:
    return [p.state for p in reports if p.state != "downloading"]


def test_a_staged_update_holds_the_floor_and_a_revert_runs_the_old_model_again(staged_agent, stand_in,
                                                                               make_artifact, tmp_path):
    old, new = make_artifact("kws", 1), make_artifact("ad", 2, latency_budget_ms=250.0)
    agent, _link = staged_agent(old)
    first = stand_in.wait_status(lambda s: s.online and s.model is not None)
    assert (first.model.sha256, first.model.slot, first.tags) == (sha(old), "a", tuple(TAGS))
    assert (first.profile, first.latency_budget_ms) == ("raspberry-pi-4", 1000.0)  # [health]: kws has no budget

    job = stand_in.send_job(new, staged=True)
    assert states(stand_in.wait_done(job)) == ["accepted", "verifying", "activating", "healthy"]
    state = agent.store.state()
    assert (state.active, state.confirmed_version, state.held.previous) == ("b", 1, "a")  # the floor stays at 1
    updated = stand_in.wait_status(lambda s: s.model is not None and s.model.version == 2)
    assert updated.latency_budget_ms == 250.0 and updated.tags == tuple(TAGS)  # the manifest's budget now
    assert agent.status()["store"]["held"] == {"previous": "a"}

    # The old slot's signed manifest altered on disk: the revert is refused, the new model keeps serving.
    manifest = tmp_path / "store" / "slots" / "a" / "manifest.json"
    original = manifest.read_bytes()
    manifest.write_bytes(original.replace(b'"version": 1', b'"version": 7'))
    refused = stand_in.send_command(REVERT, sha(old))
    reports = stand_in.wait_done(refused)
    assert states(reports) == ["accepted", "activating", "failed"]
    assert "signature does not verify" in reports[-1].reason and agent.current().sha256 == sha(new)
    manifest.write_bytes(original)
    wrong = stand_in.wait_done(stand_in.send_command(REVERT, sha(new)))  # not the other slot's model
    assert wrong[-1].state == "failed" and "slot a holds model" in wrong[-1].reason

    revert = stand_in.send_command(REVERT, sha(old))
    reports = stand_in.wait_done(revert)
    assert states(reports) == ["accepted", "activating", "healthy"], [(p.state, p.reason) for p in reports]
    assert reports[-1].model.sha256 == sha(old) and reports[-1].model.slot == "a"
    back = stand_in.wait_status(lambda s: s.model is not None and s.model.sha256 == sha(old))
    assert back.model.slot == "a" and back.latency_budget_ms == 1000.0
    assert agent.current().sha256 == sha(old) and agent.last_health.ok  # health-checked like an update
    state = agent.store.state()
    assert (state.active, state.held, state.confirmed_version) == ("a", None, 1)
    assert stand_in.requests[revert] == 0  # nothing downloaded

    # The same command again (its answer was lost): the same last word, nothing run again.
    before = len(stand_in.reports(revert))
    stand_in.send_command(REVERT, sha(old), job=revert)
    again = stand_in.wait_done(revert, count=2)
    assert len(again) == before + 1 and again[-1].state == "healthy" and again[-1].ts == reports[-1].ts
    # A new revert once there: nothing to do, and it says so as done.
    assert stand_in.wait_done(stand_in.send_command(REVERT, sha(old)))[-1].state == "healthy"
    # The model from before serves requests again.
    code, body = agent.health()
    assert code == 200 and body["version"] == 1


def test_a_confirm_raises_the_floor_and_an_older_version_is_refused_after_it(staged_agent, stand_in, make_artifact):
    old, new = make_artifact("kws", 1), make_artifact("ad", 2)
    agent, link = staged_agent(old)
    stand_in.wait_status(lambda s: s.online)
    job = stand_in.send_job(new, staged=True)
    assert stand_in.wait_done(job)[-1].state == "healthy"
    assert agent.store.state().confirmed_version == 1 and agent.store.state().held is not None

    other = stand_in.wait_done(stand_in.send_command(CONFIRM, sha(old)))  # not the model it runs
    assert other[-1].state == "failed" and "the device runs model" in other[-1].reason
    assert states(other) == ["accepted", "failed"]
    confirm = stand_in.send_command(CONFIRM, sha(new))
    assert states(stand_in.wait_done(confirm)) == ["accepted", "healthy"]
    state = agent.store.state()
    assert (state.active, state.confirmed_version, state.held) == ("b", 2, None)

    late = stand_in.wait_done(stand_in.send_command(REVERT, sha(old)))  # the way back is closed
    assert late[-1].state == "failed" and "no staged update is held" in late[-1].reason
    requests = link.ota.requests_sent
    older = stand_in.wait_done(stand_in.send_job(make_artifact("kws", 1), staged=True))
    assert older[-1].state == "failed" and "lower than the confirmed version 2" in older[-1].reason
    assert link.ota.requests_sent == requests  # refused before a single block
    assert agent.current().sha256 == sha(new)


def test_a_plain_job_for_the_held_model_confirms_it(staged_agent, stand_in, make_artifact):
    agent, link = staged_agent(make_artifact("kws", 1))
    stand_in.wait_status(lambda s: s.online)
    new = make_artifact("ad", 2)
    assert stand_in.wait_done(stand_in.send_job(new, staged=True))[-1].state == "healthy"
    again = stand_in.wait_done(stand_in.send_job(new, staged=True))  # the rollout's job sent again: still held
    assert again[-1].state == "healthy" and agent.store.state().held is not None
    requests = link.ota.requests_sent
    plain = stand_in.wait_done(stand_in.send_job(new, staged=False))
    assert plain[-1].state == "healthy" and link.ota.requests_sent == requests  # nothing downloaded
    state = agent.store.state()
    assert (state.active, state.confirmed_version, state.held) == ("b", 2, None)


def test_a_revert_to_none_when_there_was_no_model_before(staged_agent, stand_in, make_artifact):
    new = make_artifact("kws", 3)
    agent, _link = staged_agent(None)
    stand_in.wait_status(lambda s: s.online and s.model is None)
    assert stand_in.wait_done(stand_in.send_job(new, staged=True))[-1].state == "healthy"
    assert agent.store.state().held.previous is None and agent.store.state().confirmed_version is None
    refused = stand_in.wait_done(stand_in.send_command(REVERT, sha(new)))
    assert refused[-1].state == "failed" and "had no model before" in refused[-1].reason
    done = stand_in.wait_done(stand_in.send_command(REVERT, None))
    assert states(done) == ["accepted", "activating", "healthy"] and done[-1].model is None
    assert agent.current() is None and agent.store.state().active is None
    status = stand_in.wait_status(lambda s: s.model is None)
    assert status.online and status.latency_budget_ms is None and status.tags == tuple(TAGS)
    assert agent.health()[0] == 503


def test_a_revert_abandons_a_download_in_progress(staged_agent, stand_in, make_artifact, tmp_path):
    old = make_artifact("kws", 1)
    agent, link = staged_agent(old, OtaOptions(block_size=4096, max_bytes_per_s=60_000))
    stand_in.wait_status(lambda s: s.online)
    job = stand_in.send_job(make_artifact("ad", 2), staged=True, block_size=4096)  # 277 KB at 60 KB/s
    deadline = time.monotonic() + 10
    while stand_in.requests[job] < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    revert = stand_in.send_command(REVERT, sha(old))
    abandoned = stand_in.wait_done(job)
    assert abandoned[-1].state == "failed" and "abandoned: a revert" in abandoned[-1].reason
    assert abandoned[-1].received < abandoned[-1].total
    assert stand_in.wait_done(revert)[-1].state == "healthy"  # already there: it never left the old model
    asked = stand_in.requests[job]
    time.sleep(0.5)
    assert stand_in.requests[job] == asked and not link.ota.busy  # no block asked for after the revert
    assert agent.current().sha256 == sha(old) and agent.store.state().active == "a"


# --- crash safety: SIGKILL at random points of staged activations, reverts and confirms ---------------

KILLS = 24

_CYCLE = r"""
import json, sys, time
from pathlib import Path
from lepton_edge.agent.policy import InstallPolicy
from lepton_edge.agent.store import ModelStore
from lepton_edge.artifact import load_public_key
store_dir, key, *artifacts = sys.argv[1:]
store = ModelStore(store_dir, InstallPolicy((load_public_key(key),), True))
FILES = ("manifest.json", "manifest.sig", "model.tflite")
parts = {json.loads((Path(a) / "manifest.json").read_text())["model"]["sha256"]:
         tuple((Path(a) / f).read_bytes() for f in FILES) for a in artifacts}
shas = sorted(parts)
active = store.active()
if active is None:
    store.activate(store.install(*parts[shas[0]]))
    store.confirm()
elif store.state().held is not None:
    store.confirm_floor(active.artifact.sha256)  # a clean start for the cycle below
print("open", flush=True)
i = 0
while True:
    current = store.active().artifact.sha256
    other = shas[1] if current == shas[0] else shas[0]
    store.activate(store.install(*parts[other]))
    time.sleep(0.01)                  # the health check
    store.confirm(hold=True)
    time.sleep(0.02)                  # the rollout's soak
    if i % 2:
        store.revert(current)
        time.sleep(0.01)              # the revert's health check
        store.confirm()
    else:
        store.confirm_floor(other)
    i += 1
"""


def test_sigkill_during_staged_updates_reverts_and_confirms_always_reopens_consistent(tmp_path, signing,
                                                                                       make_artifact):
    key = signing[1]
    artifacts = [make_artifact("kws", 1), make_artifact("ad", 1)]  # one version: the floor never refuses
    shas = {sha(a) for a in artifacts}
    store_dir = tmp_path / "store"
    policy = InstallPolicy((load_public_key(key),), True)
    rng = random.Random(11)
    seen: Counter[str] = Counter()
    for i in range(KILLS):
        child = subprocess.Popen([sys.executable, "-c", _CYCLE, str(store_dir), str(key), *map(str, artifacts)],
                                 cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout.readline() == b"open\n", child.stderr.read()
        time.sleep(rng.uniform(0.0, 0.2))
        child.kill()
        child.communicate(timeout=20)
        store = ModelStore(store_dir, policy)
        try:
            seen["recovered a pending activation"] += store.recovered_from is not None
            state = store.state()
            assert not state.pending and state.confirmed_version == 1, f"kill {i}: {state}"
            active = store.active()  # verifies signature and hash
            assert active is not None and active.artifact.sha256 in shas, f"kill {i}: {state}"
            assert not [p.name for p in (store_dir / "slots").iterdir() if p.name.startswith(".")]
            if state.held is not None:
                seen["held"] += 1
                previous = load_artifact(store.slot_dir(state.held.previous), policy.trusted_keys)
                assert previous.sha256 in shas - {active.artifact.sha256}, f"kill {i}: {state}"
                back = store.revert(previous.sha256)  # the way back works after the crash
                assert back.pending and back.artifact.sha256 == previous.sha256
                store.rollback()  # (its health check "failed": the staged model again, still held)
                assert store.state() == state
        finally:
            store.close()
    assert seen["held"] >= 1 and seen["recovered a pending activation"] >= 1, seen
    print(dict(seen))
