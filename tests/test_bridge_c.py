"""The C99 frame codec, built with the system compiler, against PROTOCOL.md's test vectors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from test_bridge_codec import spec_vector_lines

C_DIR = Path(__file__).resolve().parent.parent / "firmware_bridge" / "c"


def _compiler() -> str:
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no C compiler on this machine")


def test_c_codec_passes_the_spec_vectors(tmp_path):
    exe = tmp_path / "test_vectors"
    build = subprocess.run([_compiler(), "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2",
                            str(C_DIR / "lepton_frame.c"), str(C_DIR / "test_vectors.c"), "-o", str(exe)],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("\n".join(spec_vector_lines()) + "\n")  # straight from the spec, not the copy
    run = subprocess.run([str(exe), str(vectors)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 failures" in run.stdout
    counts = {kind: sum(1 for line in spec_vector_lines() if line.startswith(kind + " "))
              for kind in ("frame", "bad", "cobs")}
    assert f"{sum(counts.values()) + 1} checks" in run.stdout  # every vector, plus the resync run
