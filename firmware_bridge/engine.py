"""The simulated device's inference engine: real TFLite Micro with a fixed arena, bytes in and out."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lepton_edge.errors import LeptonError
from lepton_edge.runtime.base import TensorSpec
from lepton_edge.runtime.tflm import TflmRunner, arena_use, load_tflm
from lepton_edge.stdio import captured_fd2


class LoadError(LeptonError):
    """The model cannot run: ``arena`` says the arena was too small, else the model is unusable."""

    def __init__(self, message: str, *, arena: bool = False) -> None:
        super().__init__(message)
        self.arena = arena


@dataclass
class LoadedModel:
    runner: TflmRunner
    arena_bytes: int
    head_bytes: int
    tail_bytes: int

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.runner.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.runner.outputs

    @property
    def input_bytes(self) -> int:
        return sum(s.nbytes for s in self.inputs)

    @property
    def output_bytes(self) -> int:
        return sum(s.nbytes for s in self.outputs)

    def invoke(self, data: bytes) -> tuple[bytes, int]:
        """Run on the concatenated input tensors; return the concatenated outputs and microseconds."""
        arrays, at = [], 0
        for spec in self.inputs:
            arrays.append(np.frombuffer(data, dtype=spec.dtype, count=int(np.prod(spec.shape)), offset=at)
                          .reshape(spec.shape))
            at += spec.nbytes
        start = time.perf_counter_ns()
        outputs = self.runner.run(arrays)
        elapsed_us = (time.perf_counter_ns() - start) // 1000
        return b"".join(np.ascontiguousarray(o).tobytes() for o in outputs), int(elapsed_us)


def load_model(model_bytes: bytes, arena_bytes: int, ram_budget_bytes: int, *,
               host_arena_bytes: int | None = None) -> LoadedModel:
    """Load into TFLite Micro with exactly ``arena_bytes``; TFLite Micro's own log is kept off stderr.

    ``host_arena_bytes`` (:func:`firmware_bridge.payload.host_arena_bytes`): the interpreter here is
    x86-64 TFLite Micro, which may need more than a figure measured on the 32-bit target; it then gets
    the host's own figure while the device's arena stays ``arena_bytes`` (what INFO and STATS report)."""
    if arena_bytes > ram_budget_bytes:
        raise LoadError(f"arena of {arena_bytes} bytes exceeds the {ram_budget_bytes} bytes of RAM", arena=True)
    missing = _missing_ops(model_bytes)
    if missing:
        raise LoadError(f"operator {', '.join(missing)} is not in the firmware's op list (core/ops.h)")
    own = max(arena_bytes, host_arena_bytes or 0)
    failure: LeptonError | None = None
    with captured_fd2() as log:
        try:
            runner = load_tflm(model_bytes, own, ram_budget_bytes=max(ram_budget_bytes, own), source="model")
        except LeptonError as exc:
            failure = exc
        else:
            head, tail = _allocations(model_bytes, own, runner)
    if failure is not None:
        why = str(failure)
        arena = "arena" in why.lower() or "allocate" in log.text.lower()
        last = [line.strip() for line in log.text.splitlines() if line.strip()][-1:]
        raise LoadError("; ".join([why, *last]), arena=arena)
    return LoadedModel(runner, arena_bytes, head, tail)


def _missing_ops(model_bytes: bytes) -> list[str]:
    """Operators the reference firmware's op resolver lacks (its core/ops.h): a device refuses the model."""
    from lepton_edge.runtime.op_support import unsupported_ops
    from lepton_edge.tflite.reader import parse_model

    try:
        model = parse_model(bytes(model_bytes))
    except LeptonError:
        return []  # not a model at all: TFLite Micro says why
    return unsupported_ops((op.opcode for sg in model.subgraphs for op in sg.operators), "tflm")


def _allocations(model_bytes: bytes, arena_bytes: int, runner: TflmRunner) -> tuple[int, int]:
    """Head and tail as TFLite Micro reports them, from a twin interpreter that ran once on zeros."""
    try:
        use = arena_use(model_bytes, arena_bytes, runner.inputs)
    except (RuntimeError, ValueError) as exc:
        raise LoadError(f"TFLite Micro cannot invoke the model: {exc}") from None
    return use.head_bytes, use.tail_bytes
