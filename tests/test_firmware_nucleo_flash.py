"""The NUCLEO-L4R5ZI port's flash writer (firmware_bridge/firmware/boards/nucleo-l4r5zi/dword_writer.h):
writes of any offset, length and order on a flash whose 64-bit double words program once after an
erase, checked on a simulated STM32L4 flash with the system C++ compiler (ASan + UBSan)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NUCLEO_DIR = Path(__file__).resolve().parent.parent / "firmware_bridge" / "firmware" / "boards" / "nucleo-l4r5zi"


@pytest.fixture(scope="module")
def writer_test(tmp_path_factory) -> Path:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is not installed")
    exe = tmp_path_factory.mktemp("dword") / "test_dword_writer"
    subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-O1", "-g",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    str(NUCLEO_DIR / "test_dword_writer.cc"), "-o", str(exe)], check=True)
    return exe


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_byte_lands_and_no_double_word_is_programmed_twice(writer_test, seed):
    run = subprocess.run([str(writer_test), str(seed)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "ok"
