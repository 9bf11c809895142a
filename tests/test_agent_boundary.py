"""The device-side boundary: the agent never loads TensorFlow, Keras or matplotlib.

A running agent serving a model on each backend has no TensorFlow shared object mapped
(``/proc/<pid>/maps``). The import-level proof (every device-side module, both interpreters and the whole
command line in a fresh interpreter) is ``tests/test_boundaries.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_helpers import AgentProcess, write_config


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
