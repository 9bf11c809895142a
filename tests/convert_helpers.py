"""Helpers shared by the converter's tests: compile the firmware C array, replay a manifest's self-test."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

MAIN_CC = r"""
#include <cstdint>
#include <cstdio>
#include "model_data.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  FILE* f = std::fopen(argv[1], "wb");
  if (!f) return 3;
  std::fwrite(g_model, 1, g_model_len, f);
  std::fclose(f);
  std::printf("%lu\n", static_cast<unsigned long>(reinterpret_cast<std::uintptr_t>(g_model) % 16));
  return 0;
}
"""


def cxx() -> str:
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no C++ compiler (g++, c++ or clang++) on this machine")


def compile_model_array(firmware: Path, work: Path) -> tuple[bytes, int]:
    """Build model_data.cc with a main that writes g_model to a file; return (bytes, address % 16)."""
    (work / "main.cc").write_text(MAIN_CC)
    exe = work / "dump_model"
    subprocess.run([cxx(), "-std=c++11", "-O1", "-I", str(firmware), str(work / "main.cc"),
                    str(firmware / "model_data.cc"), "-o", str(exe)], check=True, capture_output=True, text=True)
    out = work / "dumped.tflite"
    proc = subprocess.run([str(exe), str(out)], check=True, capture_output=True, text=True)
    return out.read_bytes(), int(proc.stdout.strip())


def replay_self_test(manifest: dict, model_bytes: bytes) -> dict[str, str]:
    """Run the manifest's self-test input on each runtime it names; return the output digests."""
    from lepton_edge.runtime.base import io_specs
    from lepton_edge.runtime.litert import load_litert
    from lepton_edge.runtime.tflm import load_tflm
    from lepton_edge.tflite.reader import parse_model

    specs, _ = io_specs(parse_model(model_bytes))
    raw = base64.b64decode(manifest["self_test"]["input_b64"])
    inputs, offset = [], 0
    for spec in specs:
        inputs.append(np.frombuffer(raw, dtype=spec.dtype, count=spec.num_elements, offset=offset).reshape(spec.shape))
        offset += spec.nbytes
    assert offset == len(raw)
    digests = {}
    for name in manifest["self_test"]["output_sha256"]:
        if name == "tflm":
            # x86-64 TFLite Micro: the host's figure (a target-measured recommendation can be smaller)
            arena = manifest["arena"]
            runner = load_tflm(model_bytes, arena.get("host_recommended_bytes") or arena["recommended_bytes"])
        else:
            runner = load_litert(model_bytes)
        outputs = runner.run(inputs)
        digests[name] = hashlib.sha256(b"".join(np.ascontiguousarray(o).tobytes() for o in outputs)).hexdigest()
    return digests
