"""Ask real TFLite Micro, independently of lepton-edge's own code, how a model runs at an arena size.

Runs in a child process: TFLite Micro writes its allocation report on file descriptor 2.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SCRIPT = r"""
import sys, json, numpy as np
from tflite_micro.python.tflite_micro import runtime
model, arena, inputs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    it = runtime.Interpreter.from_file(model, arena_size=arena)
except Exception as exc:
    print(json.dumps({"ok": False, "error": str(exc)})); sys.exit(0)
data = np.load(inputs)
outputs = []
for k in range(int(data["n"])):
    i = 0
    while f"in{k}_{i}" in data:
        it.set_input(data[f"in{k}_{i}"], i); i += 1
    it.invoke()
    outs, j = [], 0
    while True:
        try:
            outs.append(it.get_output(j).tobytes().hex()); j += 1
        except Exception:
            break
    outputs.append(outs)
it.print_allocations()
print(json.dumps({"ok": True, "outputs": outputs}))
"""
_LINE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


@dataclass
class TflmRun:
    ok: bool
    head: int | None = None
    tail: int | None = None
    outputs: list | None = None
    error: str = ""


def tflm_run(model: Path, arena: int, inputs: list[list[np.ndarray]], workdir: Path) -> TflmRun:
    npz = workdir / f"inputs_{model.stem}.npz"
    arrays = {"n": np.array(len(inputs))}
    for k, tensors in enumerate(inputs):
        for i, t in enumerate(tensors):
            arrays[f"in{k}_{i}"] = t
    np.savez(npz, **arrays)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(model), str(arena), str(npz)],
                          capture_output=True, text=True, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result["ok"]:
        return TflmRun(False, error=result["error"])
    figures = {k: int(v) for k, v in _LINE.findall(proc.stderr)}
    return TflmRun(True, figures["head"], figures["tail"], result["outputs"])


def random_inputs(model: Path, n: int, seed: int = 0) -> list[list[np.ndarray]]:
    """``n`` random input sets of the model's input shapes and dtypes (read with LiteRT)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model))
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n):
        tensors = []
        for d in it.get_input_details():
            dtype = np.dtype(d["dtype"])
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                tensors.append(rng.integers(info.min, info.max + 1, size=d["shape"], dtype=dtype))
            else:
                tensors.append(rng.standard_normal(d["shape"]).astype(dtype))
        sets.append(tensors)
    return sets
