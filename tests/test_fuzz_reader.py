"""Damaged models: the reader and the inspector either work or raise BadInput, never anything else, never hang.

Deterministic: every case's mutation comes from ``random.Random("<model>:<kind>:<n>")``. Mutations hit
the whole file or, half the time, only its flatbuffer structure (everything outside the weight
buffers), where damage matters. Targeted cases rewrite vector length fields and table offsets found
by walking the flatbuffer.
"""

from __future__ import annotations

import contextlib
import random
import signal
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import flatbuffers
import numpy as np
import pytest

from conftest import MLPERF_INT8, assert_one_line_error, require_shared, run_cli
from lepton_edge.errors import BadInput
from lepton_edge.inspection import inspect_model
from lepton_edge.tflite.model import TFLiteModel
from lepton_edge.tflite.reader import parse_model
from lepton_edge.tflite.vendor import schema_py_generated as fb

CASES_PER_KIND = 400  # x 7 kinds x 3 models = 8,400 in-process cases (plus the targeted sweeps)
CASE_TIMEOUT_S = 5.0
MODELS = ("kws", "ic", "ad")


class _Hang(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` can swallow it."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def on_alarm(signum, frame):
        raise _Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class _Profile:
    name: str = "fuzz"
    runtime: str = "tflm"
    kernel_library: str = "reference"
    tensor_types: tuple = ("int8", "int32")
    clock_mhz: float = 80.0
    macs_per_cycle: float = 0.5


def _run_case(data: bytes, label: str) -> tuple[str, str | None]:
    """``("parsed"|"bad", None)``, or ``("failure", description)`` for anything else."""
    try:
        with _alarm(CASE_TIMEOUT_S):
            try:
                model = parse_model(data, label)
            except BadInput:
                return "bad", None
            assert isinstance(model, TFLiteModel)
            try:
                inspect_model(model, profile=_Profile(), source=label).to_dict()
            except BadInput:
                return "bad", None
            return "parsed", None
    except _Hang as exc:
        return "failure", f"{label}: hang ({exc})"
    except Exception as exc:  # any other exception is the bug we look for
        return "failure", f"{label}: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class _Layout:
    data: bytes
    structure: tuple[int, ...]          # byte positions outside the weight buffers' data
    vector_lengths: tuple[int, ...]     # positions of uint32 vector length fields
    table_offsets: tuple[int, ...]      # positions of uoffset fields inside vectors of tables


def _vec(tab, field: int) -> tuple[int, int] | None:
    """(position of the length field, length) of the vector at vtable slot ``field``."""
    o = tab.Offset(field)
    if not o:
        return None
    start = tab.Vector(o)
    return start - 4, tab.VectorLen(o)


def _layout(data: bytes) -> _Layout:
    model = fb.Model.GetRootAs(data, 0)
    lengths: list[int] = []
    offsets: list[int] = []
    weights = bytearray(len(data))  # 1 where a buffer's data lies

    def table_vector(tab, field: int) -> None:
        v = _vec(tab, field)
        if v:
            lengths.append(v[0])
            offsets.extend(v[0] + 4 + 4 * i for i in range(v[1]))

    def plain_vector(tab, field: int) -> None:
        v = _vec(tab, field)
        if v:
            lengths.append(v[0])

    # Model: operator_codes 6, subgraphs 8, buffers 12, metadata 16.
    for field in (6, 8, 12, 16):
        table_vector(model._tab, field)
    for b in range(model.BuffersLength()):
        v = _vec(model.Buffers(b)._tab, 4)
        if v:
            lengths.append(v[0])
            weights[v[0] + 4: v[0] + 4 + v[1]] = b"\x01" * v[1]
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        table_vector(sg._tab, 4)   # tensors
        table_vector(sg._tab, 10)  # operators
        plain_vector(sg._tab, 6)   # inputs
        plain_vector(sg._tab, 8)   # outputs
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            plain_vector(tensor._tab, 4)   # shape
            plain_vector(tensor._tab, 18)  # shape_signature
            q = tensor.Quantization()
            if q is not None:
                plain_vector(q._tab, 8)   # scale
                plain_vector(q._tab, 10)  # zero_point
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            plain_vector(op._tab, 6)  # inputs
            plain_vector(op._tab, 8)  # outputs
    for pos in lengths:  # the walk must have found real length fields
        assert struct.unpack_from("<I", data, pos)[0] <= len(data)
    structure = tuple(i for i in range(len(data)) if not weights[i])
    return _Layout(data, structure, tuple(sorted(set(lengths))), tuple(sorted(set(offsets))))


_LAYOUTS: dict[str, _Layout] = {}


def _model_layout(name: str) -> _Layout:
    if name not in _LAYOUTS:
        _LAYOUTS[name] = _layout(require_shared(MLPERF_INT8[name]).read_bytes())
    return _LAYOUTS[name]


# ---------------------------------------------------------------------------------------- mutations


def _position(rng: random.Random, lay: _Layout, end: int | None = None) -> int:
    """A byte position: half the time anywhere, half the time in the flatbuffer structure."""
    n = len(lay.data) if end is None else end
    if rng.random() < 0.5:
        return rng.randrange(n)
    return rng.choice(lay.structure) % n


def _flip(rng: random.Random, lay: _Layout) -> bytes:
    data = bytearray(lay.data)
    for _ in range(rng.randint(1, 8)):
        data[_position(rng, lay)] ^= 1 << rng.randrange(8)
    return bytes(data)


def _overwrite(rng: random.Random, lay: _Layout) -> bytes:
    data = bytearray(lay.data)
    pos = _position(rng, lay)
    span = rng.randint(1, 64)
    fill = rng.choice([lambda: rng.randbytes(span), lambda: b"\xff" * span, lambda: b"\x00" * span])()
    data[pos:pos + span] = fill[: len(data) - pos]
    return bytes(data)


def _truncate(rng: random.Random, lay: _Layout) -> bytes:
    return lay.data[: rng.randrange(len(lay.data))]


def _insert(rng: random.Random, lay: _Layout) -> bytes:
    pos = _position(rng, lay)
    return lay.data[:pos] + rng.randbytes(rng.randint(1, 16)) + lay.data[pos:]


def _delete(rng: random.Random, lay: _Layout) -> bytes:
    pos = _position(rng, lay)
    return lay.data[:pos] + lay.data[pos + rng.randint(1, 16):]


_EVIL_LENGTHS = (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0x10000000, 0x00FFFFFF, 65536)


def _vector_length(rng: random.Random, lay: _Layout) -> bytes:
    data = bytearray(lay.data)
    for _ in range(rng.randint(1, 3)):
        pos = rng.choice(lay.vector_lengths)
        old = struct.unpack_from("<I", data, pos)[0]
        new = rng.choice([*_EVIL_LENGTHS, old + 1, old * 2 + 1, len(data) // 4, len(data), rng.getrandbits(32)])
        struct.pack_into("<I", data, pos, new & 0xFFFFFFFF)
    return bytes(data)


def _table_offset(rng: random.Random, lay: _Layout) -> bytes:
    """Point uoffsets of table vectors elsewhere: at the same table, out of the file, at random bytes."""
    data = bytearray(lay.data)
    pos = rng.choice(lay.table_offsets)
    choice = rng.randrange(4)
    if choice == 0:  # every following entry shares this entry's table
        target = pos + struct.unpack_from("<I", data, pos)[0]
        for p in [q for q in lay.table_offsets if q >= pos][:64]:
            if p + 4 <= len(data) and target - p >= 0:
                struct.pack_into("<I", data, p, target - p)
    elif choice == 1:
        struct.pack_into("<I", data, pos, rng.choice([0, 4, 0xFFFFFFF0, len(data) - pos, len(data) - pos - 2]))
    elif choice == 2:
        struct.pack_into("<I", data, pos, rng.randrange(len(data)))
    else:  # the root offset itself
        struct.pack_into("<I", data, 0, rng.choice([0, 4, 8, len(data) - 4, rng.getrandbits(32)]))
    return bytes(data)


MUTATIONS: dict[str, Callable[[random.Random, _Layout], bytes]] = {
    "flip": _flip,
    "overwrite": _overwrite,
    "truncate": _truncate,
    "insert": _insert,
    "delete": _delete,
    "vector_length": _vector_length,
    "table_offset": _table_offset,
}


def _cases(name: str, kind: str, n: int = CASES_PER_KIND) -> Iterator[tuple[str, bytes]]:
    lay = _model_layout(name)
    for i in range(n):
        label = f"{name}:{kind}:{i}"
        yield label, MUTATIONS[kind](random.Random(label), lay)


# ---------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_mutated_models(name: str, kind: str) -> None:
    outcomes = {"parsed": 0, "bad": 0}
    failures: list[str] = []
    for label, data in _cases(name, kind):
        outcome, detail = _run_case(data, label)
        if detail:
            failures.append(detail)
        else:
            outcomes[outcome] += 1
    assert not failures, f"{len(failures)} of {CASES_PER_KIND} cases failed:\n" + "\n".join(failures[:20])
    if kind in ("truncate", "vector_length"):  # these must nearly always be caught
        assert outcomes["bad"] > 0


@pytest.mark.parametrize("name", MODELS)
def test_every_truncation_of_the_head(name: str) -> None:
    """Cut the file at every point of its first 2 KiB, and at every 97th byte after."""
    data = _model_layout(name).data
    cuts = list(range(0, min(2048, len(data)))) + list(range(2048, len(data), 97))
    failures = [d for cut in cuts for _, d in [_run_case(data[:cut], f"{name}:cut:{cut}")] if d]
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("name", MODELS)
def test_every_vector_length_maximal(name: str) -> None:
    """Each vector length field in turn set to 0xFFFFFFFF, 0x7FFFFFFF and one past its true value."""
    lay = _model_layout(name)
    failures = []
    for pos in lay.vector_lengths:
        old = struct.unpack_from("<I", lay.data, pos)[0]
        for new in (0xFFFFFFFF, 0x7FFFFFFF, old + 1):
            data = bytearray(lay.data)
            struct.pack_into("<I", data, pos, new)
            _, detail = _run_case(bytes(data), f"{name}:len@{pos}={new:#x}")
            if detail:
                failures.append(detail)
    assert not failures, "\n".join(failures[:20])


def _shared_table_model(n: int, what: str) -> bytes:
    """A hand-built file whose ``n`` tensors (or operators, or operator codes) all share one table
    with an ``n``-long vector or string: legal flatbuffers, quadratic work for a naive reader."""
    b = flatbuffers.Builder(1024)
    long_vec = b.CreateNumpyVector(np.zeros(n, dtype=np.int32))
    long_str = b.CreateString("x" * n)
    fb.TensorStart(b)
    if what == "shape":
        fb.TensorAddShape(b, long_vec)
    if what == "name":
        fb.TensorAddName(b, long_str)
    tensor = b.EndObject()
    fb.OperatorStart(b)
    if what == "op_inputs":
        fb.OperatorAddInputs(b, long_vec)
    op = b.EndObject()
    fb.OperatorCodeStart(b)
    if what == "custom_code":
        fb.OperatorCodeAddBuiltinCode(b, fb.BuiltinOperator.CUSTOM)
        fb.OperatorCodeAddCustomCode(b, long_str)
    code = b.EndObject()

    def shared(table: int, count: int) -> int:
        b.StartVector(4, count, 4)
        for _ in range(count):
            b.PrependUOffsetTRelative(table)
        return b.EndVector()

    tensors = shared(tensor, n if what in ("shape", "name") else 1)
    ops = shared(op, n if what == "op_inputs" else 0)
    codes = shared(code, n if what == "custom_code" else 1)
    fb.SubGraphStart(b)
    fb.SubGraphAddTensors(b, tensors)
    fb.SubGraphAddOperators(b, ops)
    sg = b.EndObject()
    subgraphs = shared(sg, 1)
    fb.ModelStart(b)
    fb.ModelAddVersion(b, 3)
    fb.ModelAddOperatorCodes(b, codes)
    fb.ModelAddSubgraphs(b, subgraphs)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.mark.parametrize("what", ["shape", "name", "op_inputs", "custom_code"])
def test_shared_tables_are_refused_quickly(what: str) -> None:
    data = _shared_table_model(20_000, what)
    started = time.monotonic()
    assert _run_case(data, f"shared-{what}") == ("bad", None)
    assert time.monotonic() - started < 1.0
    assert _run_case(_shared_table_model(3, what), f"small-shared-{what}")[1] is None


def test_absurd_shape_is_refused() -> None:
    """A tensor of 600 dimensions of 2**31-1: its element count has 5,600 digits (too long for JSON)."""
    model = fb.ModelT.InitFromPackedBuf(_model_layout("kws").data, 0)
    sg = model.subgraphs[0]
    sg.tensors[sg.operators[0].outputs[0]].shape = np.full(600, 2**31 - 1, dtype=np.int32)
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    assert _run_case(bytes(b.Output()), "absurd-shape") == ("bad", None)


def test_unmodified_models_parse() -> None:
    for name in MODELS:
        assert _run_case(_model_layout(name).data, name) == ("parsed", None)


def test_cli_one_line_on_corrupt_files(tmp_path: Path) -> None:
    """About 20 damaged files through the real command: exit 2, one line, no traceback."""
    picked: list[tuple[str, bytes]] = []
    for kind in sorted(MUTATIONS):
        found = 0
        for name in MODELS:
            for label, data in _cases(name, kind, n=40):
                if found < 3 and _run_case(data, label)[0] == "bad":
                    picked.append((label, data))
                    found += 1
    assert len(picked) >= 18
    started = time.monotonic()
    for label, data in picked[:21]:
        path = tmp_path / (label.replace(":", "_") + ".tflite")
        path.write_bytes(data)
        line = assert_one_line_error(run_cli("inspect", str(path)), 2)
        assert "corrupt or truncated" in line or "not a TFLite model" in line, line
    assert time.monotonic() - started < 60
