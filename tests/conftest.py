"""Shared fixtures: where ../shared lives, and skipping (or failing, in CI) without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO.parent / "shared").resolve()
MLPERF = SHARED / "models" / "mlperf-tiny"

MLPERF_INT8 = {
    "kws": MLPERF / "kws" / "kws_ref_model_int8.tflite",
    "ic": MLPERF / "ic" / "pretrainedResnet_int8.tflite",
    "ad": MLPERF / "ad" / "ad01_int8.tflite",
}
MLPERF_FLOAT = {
    "kws": MLPERF / "kws" / "kws_ref_model_float32.tflite",
    "ic": MLPERF / "ic" / "pretrainedResnet.tflite",
    "ad": MLPERF / "ad" / "ad01_fp32.tflite",
}


def require_shared(path: Path) -> Path:
    """Return ``path`` inside ../shared, or skip the test (fail when LEPTON_REQUIRE_SHARED=1)."""
    if path.exists():
        return path
    message = f"{path} is missing: the MLPerf Tiny models and data live in ../shared beside the repo"
    if os.environ.get("LEPTON_REQUIRE_SHARED") == "1":
        pytest.fail(message + " (LEPTON_REQUIRE_SHARED=1)")
    pytest.skip(message)


@pytest.fixture(params=sorted(MLPERF_INT8))
def mlperf_int8(request) -> Path:
    return require_shared(MLPERF_INT8[request.param])


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``lepton-edge`` in a subprocess, as a user would."""
    full_env = dict(os.environ)
    full_env.pop("LEPTON_DEBUG", None)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "lepton_edge", *map(str, args)], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The bad-input contract: exit ``code``, one line on stderr, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="session")
def sample_models(tmp_path_factory):
    """``sample_models(name) -> Path``: the project's own Keras-made int8 models, built once per session."""
    from lepton_edge.tools.samples import make_sample

    out = tmp_path_factory.mktemp("samples")
    return lambda name: make_sample(name, out)
