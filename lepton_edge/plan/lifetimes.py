"""Which tensors live in the arena, from when to when, and the lower bound on any plan.

Definitions follow docs/DESIGN.md ("The lower bound the planner is measured against"): a tensor of the
subgraph is planned when it has no constant data and is not a variable; it is live from the first
operator that reads or writes it to the last that reads it; graph inputs are live from operator 0,
graph outputs until the last operator; its size is its byte size rounded up to 16.
"""

from __future__ import annotations

from dataclasses import dataclass

from lepton_edge.errors import BadInput
from lepton_edge.tflite.model import Subgraph, TFLiteModel, align_up


@dataclass(frozen=True)
class Lifetime:
    tensor: int  # index in the subgraph
    name: str
    size: int  # bytes, rounded up to the arena alignment
    first: int  # first operator at which it is live
    last: int  # last operator at which it is live

    def overlaps(self, other: Lifetime) -> bool:
        return self.first <= other.last and other.first <= self.last


def check_plannable(model: TFLiteModel, source: str = "model") -> Subgraph:
    """The one subgraph of ``model``, or :class:`BadInput` saying why it cannot be planned statically."""
    if len(model.subgraphs) != 1:
        raise BadInput(
            f"{source}: has {len(model.subgraphs)} subgraphs (control flow such as IF, WHILE or CALL_ONCE); "
            "an offline arena plan covers models with exactly one subgraph")
    sg = model.main
    if not sg.operators:
        raise BadInput(f"{source}: has no operators to plan")
    # Converters write -1 into shape_signature where a Keras model had None. A -1 batch dimension is
    # harmless (shape holds 1 and every runtime uses it, and it spreads into the signatures of tensors
    # computed from the input); a -1 in another dimension of an input means memory depends on the data.
    for t in (sg.tensors[i] for i in sg.inputs):
        if t.dynamic_dims:
            dims = ",".join(str(d) for d in (t.shape_signature or t.shape))
            raise BadInput(f"{source}: input '{t.name}' has a dynamic shape [{dims}]; "
                           "a static arena needs fixed shapes (re-export with a fixed input shape)")
    for t in sg.tensors:
        if any(d < 0 for d in t.shape):
            raise BadInput(f"{source}: tensor '{t.name}' has an unknown dimension in its shape; cannot plan it")
    return sg


def tensor_lifetimes(subgraph: Subgraph) -> list[Lifetime]:
    """Lifetimes of the planned tensors of ``subgraph``, in tensor order."""
    n_ops = len(subgraph.operators)
    first: dict[int, int] = {}
    last: dict[int, int] = {}

    def touch(t: int, op: int, *, read: bool) -> None:
        if t < 0:
            return
        first[t] = min(first.get(t, op), op)
        if read:
            last[t] = max(last.get(t, op), op)

    for t in subgraph.inputs:
        touch(t, 0, read=False)
    for op in subgraph.operators:
        for t in op.inputs:
            touch(t, op.index, read=True)
        for t in op.outputs:
            touch(t, op.index, read=False)
        for t in op.intermediates:
            touch(t, op.index, read=True)
    for t in subgraph.outputs:
        touch(t, n_ops - 1, read=True)

    lifetimes = []
    for index in sorted(first):
        tensor = subgraph.tensors[index]
        if tensor.has_data or tensor.is_variable:
            continue
        nbytes = tensor.nbytes
        if nbytes is None:
            raise BadInput(f"tensor '{tensor.name}' has type {tensor.dtype}, whose size is not fixed; cannot plan it")
        if nbytes == 0:
            continue
        start = first[index]
        lifetimes.append(Lifetime(index, tensor.name, align_up(nbytes), start, max(last.get(index, start), start)))
    return lifetimes


def live_bytes_per_op(lifetimes: list[Lifetime], n_ops: int) -> list[int]:
    """Sum of the sizes of the tensors live at each operator."""
    delta = [0] * (n_ops + 1)
    for lt in lifetimes:
        delta[lt.first] += lt.size
        delta[lt.last + 1] -= lt.size
    live, running = [], 0
    for k in range(n_ops):
        running += delta[k]
        live.append(running)
    return live


def lower_bound(lifetimes: list[Lifetime], n_ops: int) -> int:
    """No assignment of offsets can use less arena than this."""
    return max(live_bytes_per_op(lifetimes, n_ops), default=0)
