"""What is in a .tflite model: size, operators, MACs, memory, inputs and outputs, and runtime support.

Named ``inspection`` so as not to shadow the standard library's ``inspect``. Runs on devices: no
TensorFlow, only the plain model of :mod:`lepton_edge.tflite.model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from lepton_edge.runtime.op_support import unsupported_ops, unsupported_reason, unsupported_types
from lepton_edge.tflite.macs import subgraph_macs
from lepton_edge.tflite.model import Subgraph, Tensor, TFLiteModel

LATENCY_BASIS = ("total MACs / (clock_mhz x 1e6 x macs_per_cycle): an estimate that ignores memory "
                 "stalls and the cost of operators without MACs")


class ProfileLike(Protocol):
    """The fields of :class:`lepton_edge.profiles.Profile` the inspector reads (read-only: it is frozen)."""

    @property
    def name(self) -> str: ...
    @property
    def runtime(self) -> str: ...
    @property
    def kernel_library(self) -> str: ...
    @property
    def tensor_types(self) -> Sequence[str]: ...
    @property
    def clock_mhz(self) -> float: ...
    @property
    def macs_per_cycle(self) -> float: ...


@dataclass(frozen=True)
class TensorSummary:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | list[float] | None
    zero_point: int | list[int] | None


@dataclass(frozen=True)
class OpKind:
    opcode: str
    count: int
    macs: int


@dataclass(frozen=True)
class OpSummary:
    index: int
    opcode: str
    output_shape: tuple[int, ...] | None
    macs: int


@dataclass(frozen=True)
class ProfileCheck:
    profile: str
    runtime: str
    kernel_library: str
    unsupported_ops: list[str]
    unsupported_types: list[str]
    latency_ms_estimate: float | None
    unsupported_reasons: list[str] = field(default_factory=list)  # one line per unsupported operator

    @property
    def supported(self) -> bool:
        return not self.unsupported_ops and not self.unsupported_types

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["supported"] = self.supported
        d["latency_is_estimate"] = True
        d["latency_basis"] = LATENCY_BASIS
        return d


@dataclass(frozen=True)
class InspectionReport:
    """One model's summary. Operators, tensors, MACs and activations are those of the main subgraph."""

    source: str
    file_size: int
    version: int
    description: str
    subgraph_count: int
    tensor_count: int
    operator_count: int
    weight_bytes: int
    activation_bytes: int
    total_macs: int
    ops_by_kind: list[OpKind]
    operators: list[OpSummary]
    inputs: list[TensorSummary]
    outputs: list[TensorSummary]
    metadata: list[str]
    profile: ProfileCheck | None = None
    #: the artifact's preprocessing spec (manifest.json beside the model), when there is one
    preprocess: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = self.profile.to_dict() if self.profile else None
        return d


def _tensor_summary(t: Tensor) -> TensorSummary:
    q = t.quantization
    scale: float | list[float] | None = None
    zero_point: int | list[int] | None = None
    if q is not None:
        scale = list(q.scales) if q.per_channel else (q.scales[0] if q.scales else None)
        zero_point = list(q.zero_points) if len(q.zero_points) > 1 else (q.zero_points[0] if q.zero_points else None)
    return TensorSummary(t.name, t.shape, t.dtype, scale, zero_point)


def _tensors(sg: Subgraph, indices: Sequence[int]) -> list[TensorSummary]:
    return [_tensor_summary(sg.tensors[i]) for i in indices if 0 <= i < len(sg.tensors)]


def activation_bytes(sg: Subgraph) -> int:
    """Bytes of the tensors a runtime must place in RAM: neither constant nor variable.

    A sum, not a peak: the arena planner (``plan``) finds how little of it must be live at once.
    Tensors without a fixed size (strings, unknown dimensions) are left out.
    """
    return sum(t.nbytes or 0 for t in sg.tensors if not t.has_data and not t.is_variable)


def estimate_latency_ms(total_macs: int, clock_mhz: float, macs_per_cycle: float) -> float | None:
    """``total_macs / (clock_mhz * 1e6 * macs_per_cycle)`` in ms; None when the profile gives no speed."""
    if not clock_mhz or not macs_per_cycle or clock_mhz <= 0 or macs_per_cycle <= 0:
        return None
    try:
        return total_macs / (clock_mhz * 1e6 * macs_per_cycle) * 1000.0
    except OverflowError:  # absurd shapes in a damaged file: no meaningful figure
        return None


#: Types of constant tensors that are kernel parameters rather than data: biases of int8 (int32) and
#: int16 (int64) kernels, shapes, axes and paddings. Every runtime reads them whatever its data types.
PARAMETER_TYPES = frozenset({"int32", "int64"})


def data_types(model: TFLiteModel) -> list[str]:
    """Tensor types a runtime must compute with: all tensors' types, except constant parameters."""
    return [t.dtype for sg in model.subgraphs for t in sg.tensors
            if not (t.has_data and t.dtype in PARAMETER_TYPES)]


def check_profile(model: TFLiteModel, total_macs: int, profile: ProfileLike) -> ProfileCheck:
    opcodes = [op.opcode for sg in model.subgraphs for op in sg.operators]
    dtypes = data_types(model)
    return ProfileCheck(
        profile=profile.name,
        runtime=profile.runtime,
        kernel_library=profile.kernel_library,
        unsupported_ops=unsupported_ops(opcodes, profile.runtime),
        unsupported_types=unsupported_types(dtypes, profile.tensor_types),
        latency_ms_estimate=estimate_latency_ms(total_macs, profile.clock_mhz, profile.macs_per_cycle),
        unsupported_reasons=[unsupported_reason(op, profile.runtime)
                             for op in unsupported_ops(opcodes, profile.runtime)],
    )


def inspect_model(model: TFLiteModel, profile: ProfileLike | None = None, source: str = "") -> InspectionReport:
    """Summarise ``model``; with ``profile``, check its operators and types and estimate its latency."""
    sg = model.main
    macs = subgraph_macs(sg)
    kinds: dict[str, list[int]] = {}
    operators = []
    for op, m in zip(sg.operators, macs, strict=False):
        entry = kinds.setdefault(op.opcode, [0, 0])
        entry[0] += 1
        entry[1] += m
        out = op.outputs[0] if op.outputs else -1
        out_shape = sg.tensors[out].shape if 0 <= out < len(sg.tensors) else None
        operators.append(OpSummary(op.index, op.opcode, out_shape, m))
    total = sum(macs)
    return InspectionReport(
        source=source,
        file_size=model.file_size,
        version=model.version,
        description=model.description,
        subgraph_count=len(model.subgraphs),
        tensor_count=len(sg.tensors),
        operator_count=len(sg.operators),
        weight_bytes=model.weight_bytes(),
        activation_bytes=activation_bytes(sg),
        total_macs=total,
        ops_by_kind=[OpKind(k, c, m)
                     for k, (c, m) in sorted(kinds.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))],
        operators=operators,
        inputs=_tensors(sg, sg.inputs),
        outputs=_tensors(sg, sg.outputs),
        metadata=list(model.metadata),
        profile=check_profile(model, total, profile) if profile is not None else None,
    )
