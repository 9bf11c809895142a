"""Activation health checks: a model that fails its check is rolled back while the old one keeps serving."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from agent_helpers import write_config
from lepton_edge.agent.config import load_config
from lepton_edge.agent.daemon import Agent
from lepton_edge.agent.health import check_health, zero_inputs
from lepton_edge.artifact import load_artifact, load_public_key
from lepton_edge.errors import CheckFailed
from lepton_edge.runtime.factory import open_artifact_runner


def runner_for(art):
    return open_artifact_runner(art.manifest, art.model_bytes, backend="litert")


def test_self_test_digest_and_latency_budget(make_artifact, signing):
    art = load_artifact(make_artifact("kws", 1), [load_public_key(signing[1])])
    runner = runner_for(art)
    report = check_health(runner, art.manifest, default_budget_ms=1000)
    assert report.ok and report.source == "self_test" and report.digest_checked
    assert 0 < report.latency_ms < 1000

    wrong = dict(art.manifest, self_test={**art.manifest["self_test"], "output_sha256": {"litert": "0" * 64}})
    assert "digest differs" in check_health(runner, wrong, default_budget_ms=1000).reason

    slow = dict(art.manifest, self_test={**art.manifest["self_test"], "latency_budget_ms": 1e-6})
    report = check_health(runner, slow, default_budget_ms=1000)
    assert not report.ok and "exceeds the budget of 1e-06 ms" in report.reason

    no_test = dict(art.manifest, self_test=None)
    report = check_health(runner, no_test, default_budget_ms=1000)
    assert report.ok and report.source == "zeros" and not report.digest_checked
    assert not check_health(runner, no_test, default_budget_ms=1e-6).ok  # the config's budget applies

    truncated = dict(art.manifest, self_test={"input_b64": base64.b64encode(b"\0" * 10).decode()})
    assert "self-test input unusable" in check_health(runner, truncated, default_budget_ms=1000).reason


def test_zero_inputs_encode_zero():
    from lepton_edge.runtime.base import TensorSpec, dequantize

    spec = TensorSpec("x", (1, 3), "int8", 0.5, 83)
    (z,) = zero_inputs([spec])
    assert z.dtype == np.int8 and np.all(z == 83) and np.all(dequantize(z, spec) == 0)


@pytest.fixture
def agent(tmp_path, signing):
    cfg = load_config(write_config(tmp_path / "agent.toml", store=tmp_path / "store", trusted_keys=[signing[1]]))
    agent = Agent(cfg)
    agent.open_store()
    yield agent
    agent.stop()


def test_failed_health_check_rolls_back_and_the_old_model_keeps_serving(agent, make_artifact):
    assert agent.deploy_path(make_artifact("kws", 1)).ok
    served = agent.current()
    assert (served.name, served.slot) == ("kws_ref_model_int8", "a")

    bad = make_artifact("ad", 2, digests={"litert": "f" * 64, "tflm": "f" * 64})
    with pytest.raises(CheckFailed, match="digest differs"):
        agent.deploy_path(bad)
    assert agent.current() is served  # never interrupted
    state = agent.store.state()
    assert (state.active, state.pending, state.confirmed_version) == ("a", False, 1)
    assert agent.status()["last_health_check"]["ok"] is False

    good = make_artifact("ad", 2)  # the same model with the right digests
    assert agent.deploy_path(good).ok
    assert (agent.current().name, agent.current().slot, agent.store.state().confirmed_version) == ("ad01_int8", "b", 2)
    metrics = agent.metrics.render().decode()
    assert 'lepton_agent_activations_total{result="rolled_back"} 1.0' in metrics
    assert 'lepton_agent_activations_total{result="confirmed"} 2.0' in metrics


def test_a_model_tflite_micro_cannot_allocate_is_rolled_back(tmp_path, signing, make_artifact):
    cfg = load_config(write_config(tmp_path / "tflm.toml", store=tmp_path / "tflm-store", trusted_keys=[signing[1]],
                                   backend="tflm", profile="stm32l4r5"))
    agent = Agent(cfg)
    agent.open_store()
    try:
        first = make_artifact("kws", 1, profile="stm32l4r5")
        assert agent.deploy_path(first).ok
        assert agent.current().runner.arena_bytes == load_artifact(first, [agent.config.security.trusted_keys[0]]) \
            .manifest["arena"]["total_bytes"]
        starved = make_artifact("ic", 2, profile="stm32l4r5", arena_total_bytes=4096)  # signed, fits, too small
        with pytest.raises(CheckFailed, match=r"cannot load: .*4096-byte arena"):
            agent.deploy_path(starved)
        assert agent.current().name == "kws_ref_model_int8"
        assert agent.store.state().active == "a" and not agent.store.state().pending
    finally:
        agent.stop()
