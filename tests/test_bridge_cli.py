"""``flash``, ``validate`` and ``device-sim`` as a user runs them: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time

from conftest import MLPERF_INT8, REPO, assert_one_line_error, require_shared, run_cli


def test_lossy_line_flash_completes_and_validates(sim_process):
    """0.5 % of bytes dropped and 0.5 % corrupted, both ways."""
    model = require_shared(MLPERF_INT8["kws"])
    sim = sim_process("--baud", "0", "--drop-rate", "0.005", "--corrupt-rate", "0.005", "--seed", "7")
    flashed = run_cli("flash", model, "--port", sim.port, "--json", timeout=120)
    assert flashed.returncode == 0, flashed.stderr
    report = json.loads(flashed.stdout)
    assert report["verified"] and report["lost_frames"] > 0
    assert report["final_payload_bytes"] < 1024  # the frames shrank to suit the line
    validated = run_cli("validate", model, "--port", sim.port, "--samples", "3", "--json", timeout=120)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    result = json.loads(validated.stdout)
    assert result["samples"] == 3 and result["bit_exact"] == 3 and result["max_abs_diff"] == 0


def test_too_big_for_the_profile_is_refused_before_any_byte(sim_process, tmp_path):
    model = require_shared(MLPERF_INT8["ic"])
    text = (REPO / "device_profiles" / "arduino-nano-33-ble.toml").read_text()
    text = text.replace('name = "arduino-nano-33-ble"', 'name = "tiny-board"')
    text = re.sub(r"(?m)^ram_bytes = \d+", "ram_bytes = 65536", text)
    profile = tmp_path / "tiny-board.toml"
    profile.write_text(text)
    sim = sim_process("--baud", "0", profile=str(profile))
    proc = run_cli("flash", model, "--port", sim.port)
    line = assert_one_line_error(proc, 1)
    assert "does not fit tiny-board" in line and "nothing was sent" in line
    assert "39,321 B of RAM" in line  # 65536 * 0.6, what the device reported
    stats, info = sim.stats()
    assert stats.model_bytes_received == 0 and info.transfer_xfer == 0 and info.active is None


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    missing = run_cli("flash", tmp_path / "nope.tflite", "--port", "loop://")
    assert "no such file" in assert_one_line_error(missing, 2)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model at all" * 10)
    assert_one_line_error(run_cli("flash", junk, "--port", "loop://"), 2)
    no_port = run_cli("validate", require_shared(MLPERF_INT8["kws"]), "--port", "/dev/does-not-exist")
    assert "cannot open /dev/does-not-exist" in assert_one_line_error(no_port, 2)
    assert_one_line_error(run_cli("validate", junk, "--port", "loop://", "--samples", "0"), 2)
    assert_one_line_error(run_cli("device-sim", "--profile", "no-such-board"), 2)
    assert_one_line_error(run_cli("device-sim", "--profile", "rp2040", "--drop-rate", "1.5"), 2)
    assert_one_line_error(run_cli("flash", junk, "--port", "loop://", "--baud", "0"), 2)


def test_a_silent_port_fails_after_a_bounded_wait():
    master, slave = os.openpty()  # a serial port with nobody on the other end
    try:
        started = time.monotonic()
        proc = run_cli("validate", require_shared(MLPERF_INT8["kws"]), "--port", os.ttyname(slave),
                       "--hello-timeout", "1")
        assert "no device answered HELLO" in assert_one_line_error(proc, 2)
        assert time.monotonic() - started < 20
    finally:
        os.close(master)
        os.close(slave)


def test_a_device_that_goes_away_mid_flash_is_one_line(sim_process):
    model = require_shared(MLPERF_INT8["ic"])  # about 27 s on the line at 38 400 baud: killed well before the end
    sim = sim_process("--baud", "38400")
    env = dict(os.environ)
    env.pop("LEPTON_DEBUG", None)
    flash = subprocess.Popen([sys.executable, "-m", "lepton_edge", "flash", str(model), "--port", sim.port],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    sim.proc.kill()
    _out, err = flash.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert flash.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("lepton-edge flash: error:")


def test_device_sim_prints_its_port_and_says_what_it_runs(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "lepton_edge", "device-sim", "--profile", "rp2040",
                             "--state-dir", str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert re.match(r"simulated rp2040 on /dev/pts/\d+ \(no model; slots in .*\); Ctrl-C to stop", line), line
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        proc.stdout.close()
        proc.stderr.close()


def test_flash_and_validate_an_artifact_directory(sim_process, tmp_path):
    from firmware_bridge.payload import load_payload
    from test_bridge_sim import make_artifact

    planned = load_payload(require_shared(MLPERF_INT8["kws"]))
    artifact = make_artifact(tmp_path / "kws-artifact", planned, version=4)
    sim = sim_process("--baud", "0")
    flashed = run_cli("flash", artifact.path, "--port", sim.port, "--json")
    assert flashed.returncode == 0, flashed.stderr
    report = json.loads(flashed.stdout)
    assert report["self_test"] == "passed" and report["ram_needed_bytes"] == planned.arena_bytes + 4096
    validated = run_cli("validate", artifact.path, "--port", sim.port, "--samples", "2")
    assert validated.returncode == 0, validated.stderr
    assert "2 / 2" in validated.stdout
