"""The store survives SIGKILL at any moment: kill the agent at random points of an activation, restart it,
and it serves a valid, verified model every time. Delays come from a seeded RNG."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from agent_helpers import AgentProcess, child_env, write_config
from conftest import REPO
from lepton_edge.agent.policy import InstallPolicy
from lepton_edge.agent.store import ModelStore
from lepton_edge.artifact import load_artifact, load_public_key

AGENT_KILLS = 22
STORE_KILLS = 30


def test_sigkill_during_activation_then_restart_serves_a_verified_model(tmp_path, signing, make_artifact):
    store = tmp_path / "store"
    config = write_config(tmp_path / "agent.toml", store=store, trusted_keys=[signing[1]],
                          listen=f"unix:{tmp_path / 'agent.sock'}")
    trusted = [load_public_key(signing[1])]

    def sha_of(artifact: Path) -> str:
        return json.loads((artifact / "manifest.json").read_text())["model"]["sha256"]

    first = make_artifact("kws", 1)
    agent = AgentProcess.start(config, first, wait=False)
    agent.wait_stderr("installing")
    started = time.monotonic()
    agent.wait_listening()
    window = (time.monotonic() - started) * 1.3  # from "installing" to confirmed and listening, plus a margin
    assert agent.terminate()[0] == 0
    confirmed = sha_of(first)

    rng = random.Random(4242)
    outcomes: Counter[str] = Counter()
    for i in range(AGENT_KILLS):
        new = make_artifact(("ad", "kws")[i % 2], i + 2)  # the slot's content changes every time
        victim = AgentProcess.start(config, new, wait=False)
        victim.wait_stderr("installing")
        time.sleep(rng.uniform(0, window))
        victim.proc.kill()
        out, _ = victim.proc.communicate(timeout=20)
        finished = b"listening on" in out or any("listening on" in ln for ln in victim.stdout.lines)

        survivor = AgentProcess.start(config)
        try:
            status = survivor.get("/v1/status").json()
            served = status["model"]
            assert served is not None, f"kill {i}: no model served"
            assert served["sha256"] in (confirmed, sha_of(new)), f"kill {i}: unexpected model {served}"
            assert status["store"]["pending"] is False
            # Independently of the agent: the active slot on disk verifies, and it is what is served.
            on_disk = load_artifact(store / "slots" / status["slot"], trusted)
            assert on_disk.sha256 == served["sha256"]
            n_in = sum(math.prod(s["shape"]) for s in served["inputs"])
            n_out = sum(math.prod(s["shape"]) for s in served["outputs"])
            reply = survivor.post("/v1/infer", bytes(n_in))
            assert reply.status == 200 and len(reply.body) == n_out
        finally:
            code, _, err = survivor.terminate()
        assert code == 0, err
        if served["sha256"] == sha_of(new):
            outcomes["new model confirmed"] += 1
            confirmed = served["sha256"]
        elif "rolled back" in err:
            outcomes["rolled back at restart"] += 1
        else:
            outcomes["killed before activation"] += 1
        outcomes["killed before listening" if not finished else "killed after listening"] += 1
    assert outcomes["killed before listening"] >= 1, outcomes  # the kills did land inside activations
    print(dict(outcomes))


_HAMMER = r"""
import sys, time
from pathlib import Path
from lepton_edge.agent.policy import InstallPolicy
from lepton_edge.agent.store import ModelStore
from lepton_edge.artifact import load_public_key
store_dir, key, *artifacts = sys.argv[1:]
store = ModelStore(store_dir, InstallPolicy((load_public_key(key),), True))
parts = [tuple((Path(a) / f).read_bytes() for f in ("manifest.json", "manifest.sig", "model.tflite"))
         for a in artifacts]
print("open", flush=True)
i = 0
while True:
    slot = store.install(*parts[i % len(parts)])
    store.activate(slot)
    time.sleep(0.003)  # where the agent runs the health check
    store.confirm()
    i += 1
"""


def test_store_hammered_and_killed_at_random_always_reopens_verified(tmp_path, signing, make_artifact):
    """The store alone, writing slots and state in a tight loop: kills land inside every file operation."""
    key = signing[1]
    artifacts = [make_artifact("kws", 1), make_artifact("ad", 1)]  # same version: the loop never runs out
    shas = {json.loads((a / "manifest.json").read_text())["model"]["sha256"] for a in artifacts}
    store_dir = tmp_path / "store"
    policy = InstallPolicy((load_public_key(key),), True)
    rng = random.Random(7)
    recovered = 0
    for i in range(STORE_KILLS):
        child = subprocess.Popen([sys.executable, "-c", _HAMMER, str(store_dir), str(key), *map(str, artifacts)],
                                 cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout.readline() == b"open\n", child.stderr.read()
        time.sleep(rng.uniform(0.0, 0.15))
        child.kill()
        child.communicate(timeout=20)
        store = ModelStore(store_dir, policy)
        try:
            recovered += store.recovered_from is not None
            state = store.state()
            assert not state.pending
            active = store.active()  # verifies signature and hash
            if i > 0 or active is not None:
                assert active is not None and active.artifact.sha256 in shas, f"kill {i}: {state}"
            leftovers = [p.name for p in (store_dir / "slots").iterdir() if p.name.startswith(".")]
            assert not leftovers
        finally:
            store.close()
    assert recovered >= 1  # some kills hit between activate and confirm
