"""Every MLPerf Tiny int8 model flashed and validated bit-exact, through the command line."""

from __future__ import annotations

import json

import pytest

from hil_tests.support import MLPERF_INT8, require_model


@pytest.mark.parametrize("name", sorted(MLPERF_INT8))
def test_flash_then_validate_bit_exact(target, name):
    model = require_model(name)
    flashed = target.cli("flash", str(model), "--force", "--json")
    assert flashed.returncode == 0, flashed.stderr
    report = json.loads(flashed.stdout)
    assert report["verified"] and not report["already_active"]
    assert report["model_bytes"] > 0
    if target.simulated:  # 4 KB frames on a clean line; a board with small frames does less well
        assert report["efficiency"] > 0.9, report

    validated = target.cli("validate", str(model), "--samples", "5", "--json")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    result = json.loads(validated.stdout)
    assert result["samples"] == 5
    assert result["bit_exact"] == 5
    assert result["max_abs_diff"] == 0
    assert result["device_latency_us_p50"] > 0


def test_flash_again_is_a_no_op(target):
    model = require_model("kws")
    assert target.cli("flash", str(model)).returncode == 0
    again = target.cli("flash", str(model), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["already_active"] is True


def test_validate_refuses_a_model_the_device_does_not_run(target):
    assert target.cli("flash", str(require_model("kws"))).returncode == 0
    proc = target.cli("validate", str(require_model("ad")), "--samples", "1")
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "flash it first" in lines[0] and "Traceback" not in proc.stderr
