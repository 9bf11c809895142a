"""Capture what native libraries (TensorFlow, TFLite Micro) write straight to file descriptor 2.

Python's ``sys.stderr`` redirection does not reach C++ logging; only swapping the descriptor does.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass


@contextlib.contextmanager
def fd2_to(path: str) -> Iterator[None]:
    """Send file descriptor 2 to ``path`` (``os.devnull`` to drop it) for the duration of the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


@dataclass
class Captured:
    text: str = ""


@contextlib.contextmanager
def captured_fd2() -> Iterator[Captured]:
    """Collect what is written to descriptor 2 inside the block; ``.text`` is filled when it ends."""
    result = Captured()
    with tempfile.NamedTemporaryFile("r", suffix=".log", encoding="utf-8", errors="replace") as log:
        try:
            with fd2_to(log.name):
                yield result
        finally:
            log.seek(0)
            result.text = log.read()
