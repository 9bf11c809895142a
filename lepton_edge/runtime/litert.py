"""LiteRT backend (``ai-edge-litert``), falling back to ``tflite-runtime`` where LiteRT has no wheel."""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton_edge.errors import BadInput
from lepton_edge.runtime.base import Runner, io_specs
from lepton_edge.tflite.reader import parse_model


def _interpreter_class() -> tuple[Any, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise BadInput("the litert backend needs 'ai-edge-litert' (or 'tflite-runtime' on 32-bit ARM)") from None


def available() -> bool:
    try:
        _interpreter_class()
    except BadInput:
        return False
    return True


class LiteRtRunner(Runner):
    _interpreter: Any  # ai_edge_litert's or tflite_runtime's Interpreter (untyped)
    _in_idx: list[int]
    _out_idx: list[int]
    package: str = ""

    def _invoke(self, inputs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        it = self._interpreter
        for idx, a in zip(self._in_idx, inputs, strict=False):
            it.set_tensor(idx, a)
        it.invoke()
        return [it.get_tensor(idx) for idx in self._out_idx]

    def close(self) -> None:
        self._interpreter = None


def load_litert(model_bytes: bytes, *, threads: int = 1, source: str = "model") -> LiteRtRunner:
    model = parse_model(model_bytes, source)
    cls, package = _interpreter_class()
    try:
        it = cls(model_content=bytes(model_bytes), num_threads=max(1, int(threads)))
        it.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise BadInput(f"{source}: {package} cannot load the model ({exc})") from None
    inputs, outputs = io_specs(model)
    runner = LiteRtRunner(backend="litert", inputs=inputs, outputs=outputs)
    runner._interpreter = it
    runner._in_idx = [d["index"] for d in it.get_input_details()]
    runner._out_idx = [d["index"] for d in it.get_output_details()]
    runner.package = package
    return runner
