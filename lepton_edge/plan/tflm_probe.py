"""Measure a model's arena under real TFLite Micro (the ``tflite-micro`` wheel, x86_64 hosts only).

Runs as a child process (``python -m lepton_edge.plan.tflm_probe``): TFLite Micro prints its
allocation report on file descriptor 2, logs every failed allocation there, and a malformed model
could take the process down with it. The parent gets one JSON object on stdout. The interpreter
and its report come from :mod:`lepton_edge.runtime.tflm`; this module searches the smallest arena.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from lepton_edge.runtime.base import TensorSpec, io_specs
from lepton_edge.runtime.tflm import arena_use, run_once
from lepton_edge.stdio import captured_fd2, fd2_to
from lepton_edge.tflite.reader import parse_model

ALIGN = 16


def runs(model: bytes, arena: int, inputs: Sequence[TensorSpec]) -> bool:
    with fd2_to(os.devnull):
        try:
            run_once(model, arena, inputs)
            return True
        except (RuntimeError, ValueError):
            return False


def failure_reason(model: bytes, arena: int, inputs: Sequence[TensorSpec]) -> str:
    """TFLite Micro's own words (its last log lines) for why the model does not run."""
    err = ""
    with captured_fd2() as log:
        try:
            run_once(model, arena, inputs)
        except (RuntimeError, ValueError) as exc:
            err = str(exc)
    if not err:
        return ""
    lines = [line.strip() for line in log.text.splitlines() if line.strip()]
    return "; ".join([*lines[-2:], err])


def allocations(model: bytes, arena: int, inputs: Sequence[TensorSpec]) -> dict[str, int]:
    """TFLite Micro's own report of head, tail and total for ``arena`` bytes."""
    use = arena_use(model, arena, inputs)
    return {"total": use.total_bytes, "head": use.head_bytes, "tail": use.tail_bytes}


def smallest_arena(model: bytes, start: int, inputs: Sequence[TensorSpec]) -> int:
    """The smallest arena (a multiple of 16) with which TFLite Micro allocates and invokes the model."""
    hi = max(ALIGN, (start + ALIGN - 1) // ALIGN * ALIGN)
    cap = max(64 << 20, 16 * hi)
    while not runs(model, hi, inputs):
        hi *= 2
        if hi > cap:
            raise RuntimeError(failure_reason(model, cap, inputs))
    lo = 0  # invariant: lo fails (or is 0), hi runs
    while hi - lo > ALIGN:
        mid = (lo + hi) // 2 // ALIGN * ALIGN
        if mid <= lo:
            break
        if runs(model, mid, inputs):
            hi = mid
        else:
            lo = mid
    return hi


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument("--arena", type=int, help="report allocations at this arena size")
    p.add_argument("--search-from", type=int, help="find the smallest arena, starting at this guess")
    args = p.parse_args(argv)
    model = open(args.model, "rb").read()
    result: dict[str, object] = {}
    try:
        inputs, _outputs = io_specs(parse_model(model))
        arena = args.arena
        if args.search_from is not None:
            arena = smallest_arena(model, args.search_from, inputs)
            result["smallest_arena_bytes"] = arena
            result["fails_below"] = not runs(model, arena - ALIGN, inputs)
        if arena is None:
            arena = len(model) * 10 + 65536
        result["arena_bytes"] = arena
        result.update(allocations(model, arena, inputs))
    except Exception as exc:  # reported to the parent as data
        result = {"error": str(exc) or type(exc).__name__}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
