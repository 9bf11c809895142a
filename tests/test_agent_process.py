"""``lepton-edge agent`` as a process: --model, signals (SIGHUP reload, SIGTERM graceful), one-line errors."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np

from agent_helpers import AgentProcess, connect, request, write_config
from conftest import MLPERF_INT8, assert_one_line_error, require_shared, run_cli


def test_sighup_reloads_and_sigterm_stops_gracefully(tmp_path, signing, make_artifact):
    config = write_config(tmp_path / "agent.toml", store=tmp_path / "store", trusted_keys=[signing[1]])
    agent = AgentProcess.start(config, make_artifact("kws", 1))
    try:
        assert any("serving kws_ref_model_int8 v1" in line for line in agent.stdout.lines)
        assert agent.get("/v1/status").json()["device"]["id"] == "test-device"

        write_config(config, store=tmp_path / "store", trusted_keys=[signing[1]], device_id="renamed")
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait_stderr("configuration reloaded")
        assert agent.get("/v1/status").json()["device"]["id"] == "renamed"

        config.write_text(config.read_text().replace('backend = "litert"', 'backend = "quantum"'))
        agent.proc.send_signal(signal.SIGHUP)
        assert "keeping the current configuration" in agent.wait_stderr("reload:")
        assert agent.get("/v1/status").json()["device"]["id"] == "renamed"  # still up, unchanged

        # Requests in flight when SIGTERM arrives get whole answers; then the process exits 0.
        answers, errors = [], []
        stop = threading.Event()

        def client() -> None:
            conn = connect(agent.url)
            while not stop.is_set():
                try:
                    reply = request(conn, "POST", "/v1/infer", bytes(490), {"Content-Type": "application/octet-stream"})
                except (ConnectionError, OSError) as exc:  # the server closed the connection between requests
                    errors.append(type(exc).__name__)
                    break
                answers.append((reply.status, len(reply.body)))
                if reply.headers.get("connection") == "close":
                    break
            conn.close()

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        agent.proc.send_signal(signal.SIGTERM)
        code, _out, err = agent.terminate()
        stop.set()
        for t in threads:
            t.join(10)
        assert code == 0, err
        assert "stopping (SIGTERM)" in err
        assert answers and all(a == (200, 12) for a in answers)
    finally:
        agent.kill()


def test_bare_tflite_needs_signatures_off_then_runs_on_tflite_micro(tmp_path, signing):
    model = require_shared(MLPERF_INT8["kws"])
    strict = write_config(tmp_path / "strict.toml", store=tmp_path / "s1", trusted_keys=[signing[1]])
    line = assert_one_line_error(run_cli("agent", "--config", strict, "--model", model), 2)
    assert "a bare .tflite carries no signature" in line

    sock = tmp_path / "agent.sock"
    dev = write_config(tmp_path / "dev.toml", store=tmp_path / "s2", require_signature=False, backend="tflm",
                       profile="stm32l4r5", listen=f"unix:{sock}")
    agent = AgentProcess.start(dev, model)
    try:
        status = agent.get("/v1/status").json()
        assert status["backend"] == "tflm" and status["model"]["name"] == "kws_ref_model_int8"
        assert status["model"]["signer"] is None and status["arena_bytes"] > 16000
        reply = agent.post("/v1/infer", np.zeros(490, np.int8).tobytes())
        assert reply.status == 200 and len(reply.body) == 12

        # One agent per store: a second one is refused in one line.
        line = assert_one_line_error(run_cli("agent", "--config", dev), 2)
        assert "in use by another agent" in line
    finally:
        code, _, err = agent.terminate()
    assert code == 0, err
    assert not sock.exists()


def test_model_that_fails_its_health_check_exits_1_and_the_store_stays_consistent(tmp_path, signing, make_artifact):
    config = write_config(tmp_path / "agent.toml", store=tmp_path / "store", trusted_keys=[signing[1]])
    proc = run_cli("agent", "--config", config, "--model", make_artifact("ad", 3, latency_budget_ms=1e-6))
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("lepton-edge agent: error")]
    assert proc.returncode == 1 and len(lines) == 1 and "health check failed" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    agent = AgentProcess.start(config)  # nothing was ever confirmed: the agent serves no model
    try:
        status = agent.get("/v1/status").json()
        assert status["model"] is None and status["store"] == {"active": None, "pending": False,
                                                               "confirmed_version": None, "held": None}
    finally:
        agent.terminate()
