"""Arena figures measured on the target, and flash --arena-bytes.

On qemu-m4 (which plays stm32l4r5, CMSIS-NN kernels), for each MLPerf Tiny int8 model: the arena
`plan --measure target` recommends runs the model there (flash --arena-bytes = that figure, validate
bit-exact against the host build's reference kernels on 20 inputs), and 64 bytes less makes `flash`
exit 1 with the device's error in one line. The host figure is unchanged under `--measure host`.
Without the builds these skip (they fail with LEPTON_REQUIRE_SHARED=1).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import MLPERF_INT8, assert_one_line_error, require_shared, run_cli, skip_or_fail

M4_LABEL = "cortex-m4 (qemu mps2-an386), cmsis-nn"
HOST_LABEL = "host x86-64 tflite-micro"


def _require_build(board: str):
    from lepton_edge.firmware_build.build import cached_build

    why = ""
    if shutil.which("qemu-system-arm") is None:
        why = "qemu-system-arm is not installed"
    else:
        fw = cached_build(board)
        if fw is not None:
            return fw
        why = f"no cached {board} firmware build (make test builds it; or lepton-edge firmware build --board {board})"
    skip_or_fail(why)


def _plan(model: Path, *args: str, env: dict | None = None) -> dict:
    proc = run_cli("plan", str(model), "--profile", "stm32l4r5", "--json", *args, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- without a firmware build ----------------------------------------------------------------------

def test_measure_target_without_a_build_is_one_line_naming_the_build_command(tmp_path):
    model = require_shared(MLPERF_INT8["kws"])
    env = {"LEPTON_FIRMWARE_CACHE": str(tmp_path / "empty-cache")}
    proc = run_cli("plan", str(model), "--profile", "stm32l4r5", "--measure", "target", env=env)
    line = assert_one_line_error(proc, 1)
    assert "lepton-edge firmware build --board qemu-m4" in line or "qemu-system-arm" in line
    conv = run_cli("convert", str(model), "--quantize", "none", "--profile", "stm32h743", "-o",
                   str(tmp_path / "out"), "--measure", "target", env=env)
    assert "lepton-edge firmware build --board qemu-m7" in assert_one_line_error(conv, 1) \
        or shutil.which("qemu-system-arm") is None
    assert not (tmp_path / "out").exists()
    no_profile = run_cli("plan", str(model), "--measure", "target", env=env)
    assert "--profile" in assert_one_line_error(no_profile, 1)
    # auto quietly falls back to the host, labelled so; the margin is added on top as before
    auto = _plan(model, env=env)
    assert auto["measured_on"] == HOST_LABEL
    assert auto["fit"]["arena_margin_bytes"] == 4096
    assert auto["host_recommended_arena_bytes"] == auto["recommended_arena_bytes"]
    # a profile no emulated board plays keeps the host figures, even with --measure auto
    other = run_cli("plan", str(model), "--profile", "esp32-s3", "--json", env=env)
    assert json.loads(other.stdout)["measured_on"] == HOST_LABEL


def test_host_interpreters_size_their_arena_from_the_host_figure():
    from firmware_bridge.payload import host_arena_bytes

    manifest = {"arena": {"recommended_bytes": 22_816, "host_recommended_bytes": 24_272,
                          "measured_on": M4_LABEL}}
    assert host_arena_bytes(manifest, 22_816) == 24_272  # the device's figure is too small for x86-64
    assert host_arena_bytes(json.dumps(manifest).encode(), 30_000) == 30_000
    assert host_arena_bytes(manifest, 22_752) is None  # below the recommendation: must fail as on the device
    assert host_arena_bytes({"arena": {"recommended_bytes": 24_272}}, 24_272) is None
    assert host_arena_bytes(None, 100) is None

    from lepton_edge.runtime.factory import artifact_arena_bytes

    assert artifact_arena_bytes({"arena": {"recommended_bytes": 22_816, "total_bytes": 22_816,
                                           "host_recommended_bytes": 24_272}}) == 24_272


def test_flash_arena_bytes_on_the_simulator(sim_process, tmp_path):
    """Another arena is a new flash; the same one is 'already active'; too small is one line, exit 1."""
    model = require_shared(MLPERF_INT8["kws"])
    sim = sim_process("--baud", "0", profile="stm32l4r5")

    def flash(*args: str):
        return run_cli("flash", str(model), "--port", sim.port, *args, timeout=300)

    first = flash("--json")
    assert first.returncode == 0, first.stderr
    host_arena = json.loads(first.stdout)["arena_bytes"]
    bigger = host_arena + 1024
    second = flash("--arena-bytes", str(bigger), "--json")
    assert second.returncode == 0, second.stderr
    out = json.loads(second.stdout)
    assert out["already_active"] is False and out["arena_bytes"] == bigger
    _stats, info = sim.stats()
    assert info.active.arena_bytes == bigger
    again = json.loads(flash("--arena-bytes", str(bigger), "--json").stdout)
    assert again["already_active"] is True
    small = flash("--arena-bytes", str(host_arena - 64))
    line = assert_one_line_error(small, 1)
    assert "ARENA_TOO_SMALL" in line or "arena" in line.lower()
    _stats, info = sim.stats()
    assert info.active.arena_bytes == bigger  # the device kept its model
    validated = run_cli("validate", str(model), "--port", sim.port, "--samples", "2", "--json", timeout=300)
    assert validated.returncode == 0, validated.stderr
    assert json.loads(validated.stdout)["bit_exact"] == 2


def test_a_target_measured_artifact_on_the_simulator(sim_process, tmp_path):
    """An artifact whose arena was measured on a 32-bit target (smaller than x86-64 needs): the simulator
    and validate's host reference run it with the host's figure; the device's arena stays the target's."""
    model = require_shared(MLPERF_INT8["kws"])
    out = tmp_path / "kws"
    conv = run_cli("convert", str(model), "--quantize", "none", "--profile", "stm32l4r5", "-o", str(out),
                   "--measure", "host", timeout=600)
    assert conv.returncode == 0, conv.stderr
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    arena = manifest["arena"]
    host = arena["host_recommended_bytes"]
    assert arena["measured_on"] == HOST_LABEL and arena["recommended_bytes"] == host
    target = host - 1440  # what qemu-m4 measures for KWS: 22,832 of 24,272 B
    arena.update(recommended_bytes=target, total_bytes=target, margin_bytes=0, measured_on=M4_LABEL)
    manifest["self_test"] = None
    manifest_path.write_text(json.dumps(manifest))  # unsigned: the manifest names the model's hash only

    sim = sim_process("--baud", "0", profile="stm32l4r5")
    flashed = run_cli("flash", str(out), "--port", sim.port, "--json", timeout=300)
    assert flashed.returncode == 0, flashed.stderr
    assert json.loads(flashed.stdout)["arena_bytes"] == target
    validated = run_cli("validate", str(out), "--port", sim.port, "--samples", "3", "--json", timeout=300)
    assert validated.returncode == 0, validated.stderr
    report = json.loads(validated.stdout)
    assert report["bit_exact"] == 3 and report["arena_bytes"] == target and report["reference_arena_bytes"] == host
    stats, info = sim.stats()
    assert info.active.arena_bytes == target and stats.arena_bytes == target
    # below the device's own recommendation the simulator takes the arena as given, and refuses it
    tight = run_cli("flash", str(out), "--port", sim.port, "--arena-bytes", str(target - 64), timeout=300)
    assert "ARENA_TOO_SMALL" in assert_one_line_error(tight, 1)


def test_flash_keeps_a_models_own_offline_plan(tmp_path):
    """A .tflite that carries an OfflineMemoryAllocation plan is flashed byte for byte; one without is planned."""
    import numpy as np

    from firmware_bridge.payload import load_payload
    from lepton_edge.plan.embed import OFFLINE_PLAN_METADATA, decode_plan, embedded_plan
    from lepton_edge.tflite import writer

    source = require_shared(MLPERF_INT8["kws"])
    planned = load_payload(source)
    offsets = embedded_plan(planned.model)
    assert offsets is not None and planned.model != source.read_bytes()
    # the author's own plan: everything 256 bytes further up the arena
    moved = [o + 256 if o >= 0 else o for o in offsets]
    words = np.array([1, 0, len(moved), *moved], dtype="<i4").tobytes()
    theirs = writer.set_metadata(planned.model, OFFLINE_PLAN_METADATA, words)
    path = tmp_path / "own-plan.tflite"
    path.write_bytes(theirs)
    kept = load_payload(path)
    assert kept.model == theirs
    assert decode_plan(writer.get_metadata(kept.model, OFFLINE_PLAN_METADATA)) == moved
    assert kept.arena_bytes >= planned.arena_bytes + 256 - 16
    assert "own OfflineMemoryAllocation plan kept" in kept.arena_note


# --- on qemu-m4 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def m4_board(tmp_path_factory):
    fw = _require_build("qemu-m4")
    from lepton_edge.firmware_build.launch import start_board

    state = tmp_path_factory.mktemp("qemu-m4") / "state.bin"
    board = start_board(fw, state)
    try:
        yield board
    finally:
        board.stop()


@pytest.mark.parametrize("name", sorted(MLPERF_INT8))
def test_target_recommendation_runs_on_qemu_m4_and_64_bytes_less_does_not(name, m4_board, tmp_path):
    source = require_shared(MLPERF_INT8[name])
    embedded = tmp_path / f"{name}-planned.tflite"
    target = _plan(source, "--measure", "target", "--embed", str(embedded))
    assert target["measured_on"] == M4_LABEL
    assert target["fit"]["arena_margin_bytes"] == 0  # CMSIS-NN's scratch is in the figure
    assert target["fit"]["ram_needed_bytes"] == target["recommended_arena_bytes"]
    assert target["recommended_arena_bytes"] % 16 == 0
    host = _plan(source, "--measure", "host")
    assert host["measured_on"] == HOST_LABEL
    assert host["recommended_arena_bytes"] == target["host_recommended_arena_bytes"]
    assert host["fit"]["arena_margin_bytes"] == 4096
    recommended = target["recommended_arena_bytes"]

    from firmware_bridge.payload import load_payload

    assert load_payload(embedded).model == embedded.read_bytes()  # flashed as measured: its own plan kept

    def flash(arena: int, *extra: str):
        return run_cli("flash", str(embedded), "--port", m4_board.port, "--arena-bytes", str(arena), *extra,
                       timeout=900)

    ok = flash(recommended, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["arena_bytes"] == recommended
    validated = run_cli("validate", str(embedded), "--port", m4_board.port, "--samples", "20", "--json",
                        timeout=900)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    report = json.loads(validated.stdout)
    assert report["samples"] == 20 and report["bit_exact"] == 20, report
    assert report["arena_bytes"] == recommended
    # the host reference sized its own arena from the host measurement, not the device's
    assert report["reference_arena_bytes"] == target["host_recommended_arena_bytes"]

    tight = flash(recommended - 64)
    line = assert_one_line_error(tight, 1)
    assert "Traceback" not in tight.stderr and "arena" in line.lower(), line
    assert m4_board.alive()  # no fault, no hang: the board still answers, with its model
    again = run_cli("validate", str(embedded), "--port", m4_board.port, "--samples", "1", "--json", timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["arena_bytes"] == recommended
