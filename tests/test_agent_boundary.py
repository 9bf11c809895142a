"""The device-side boundary: the agent never imports TensorFlow, Keras or matplotlib.

Two proofs: a fresh interpreter imports every device-side module (and the whole command line, as
``lepton-edge agent`` does) and finds none of them in ``sys.modules``; and a running agent serving a
model on each backend has no TensorFlow shared object mapped (``/proc/<pid>/maps``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent_helpers import AgentProcess, child_env, make_artifact, signing, write_config  # noqa: F401 - fixtures
from conftest import REPO

FORBIDDEN = ("tensorflow", "keras", "tf_keras", "matplotlib")

_CHECK = r"""
import importlib, pkgutil, sys
import lepton_edge
names = ["lepton_edge.artifact", "lepton_edge.profiles", "lepton_edge.fsio", "lepton_edge.errors",
         "lepton_edge.console", "lepton_edge.stdio", "lepton_edge.commands.agent"]
for package in ("lepton_edge.agent", "lepton_edge.runtime", "lepton_edge.tflite", "lepton_edge.mqtt"):
    mod = importlib.import_module(package)
    names += [package] + [m.name for m in pkgutil.walk_packages(mod.__path__, package + ".")]
for name in names:
    importlib.import_module(name)
from lepton_edge.cli import build_parser
build_parser()  # `lepton-edge agent` imports every command module to build its parser
import ai_edge_litert.interpreter  # noqa: the interpreters the runtimes load
from tflite_micro.python.tflite_micro import runtime  # noqa
forbidden = sys.argv[1].split(",")
# Top-level names only: tflite_micro ships a subpackage called tflite_micro.tensorflow (not TensorFlow).
found = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
print("imported", len(names), "modules")
print("FORBIDDEN:", found[:10])
sys.exit(1 if found else 0)
"""


def test_device_side_modules_import_no_tensorflow():
    proc = subprocess.run([sys.executable, "-c", _CHECK, ",".join(FORBIDDEN)], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FORBIDDEN: []" in proc.stdout


def mapped_objects(pid: int) -> set[str]:
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if len(line.split()) >= 6 and line.split()[-1].startswith("/")}


def is_tensorflow(path: str) -> bool:
    name = Path(path).name
    return ("/site-packages/tensorflow/" in path or "/site-packages/keras/" in path
            or "/site-packages/matplotlib/" in path or name.startswith("libtensorflow")
            or name.startswith("_pywrap_tensorflow_internal"))


@pytest.mark.parametrize("backend, profile", [("litert", "raspberry-pi-4"), ("tflm", "stm32l4r5")])
def test_running_agent_maps_no_tensorflow_library(tmp_path, signing, make_artifact, backend, profile):
    config = write_config(tmp_path / "agent.toml", store=tmp_path / "store", trusted_keys=[signing[1]],
                          backend=backend, profile=profile)
    agent = AgentProcess.start(config, make_artifact("kws", 1, profile=profile))
    try:
        assert agent.post("/v1/infer", bytes(490)).status == 200  # the interpreter is loaded and has run
        objects = mapped_objects(agent.proc.pid)
        interpreter = "ai_edge_litert" if backend == "litert" else "tflite_micro"
        assert any(interpreter in p for p in objects), "the check must see the interpreter's own library"
        assert not [p for p in objects if is_tensorflow(p)]
    finally:
        agent.terminate()
