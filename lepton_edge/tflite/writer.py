"""Edit a .tflite model's metadata and write it back without losing buffer alignment.

The schema asks for buffer data aligned to 16 bytes, but the generated Python object API packs
byte vectors with alignment 1 (docs/DESIGN.md, "Facts the code relies on": 4-byte alignment survives by
luck, 16 is lost). We pack
every buffer's data ourselves with 16-byte alignment, so no buffer of the written model is less
aligned than in its input. Uses only ``flatbuffers`` and the vendored schema: device-safe.
"""

from __future__ import annotations

import flatbuffers
import numpy as np

from lepton_edge.errors import BadInput
from lepton_edge.tflite.reader import FILE_IDENTIFIER, parse_model
from lepton_edge.tflite.vendor import schema_py_generated as fb

BUFFER_ALIGNMENT = 16


class _AlignedBufferT(fb.BufferT):
    """A BufferT whose data vector starts on a 16-byte boundary of the output file."""

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data_offset = None
        if self.data is not None:
            payload = np.asarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head:builder.head + len(payload)] = payload
            data_offset = builder.EndVector()
        fb.BufferStart(builder)
        if data_offset is not None:
            fb.BufferAddData(builder, data_offset)
        fb.BufferAddOffset(builder, self.offset)
        fb.BufferAddSize(builder, self.size)
        end: int = fb.BufferEnd(builder)
        return end


def _as_aligned(buffer: fb.BufferT) -> _AlignedBufferT:
    aligned = _AlignedBufferT()  # type: ignore[no-untyped-call]  # BufferT's generated __init__
    aligned.data, aligned.offset, aligned.size = buffer.data, buffer.offset, buffer.size
    return aligned


def unpack(model_bytes: bytes) -> fb.ModelT:
    """The object-API form of a model already validated by :func:`parse_model`."""
    parse_model(model_bytes)
    model: fb.ModelT = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    return model


def pack(model: fb.ModelT) -> bytes:
    """Serialise ``model`` with every buffer 16-byte aligned and the TFL3 identifier."""
    if any((b.offset or 0) > 1 for b in model.buffers or []):
        raise BadInput("model keeps buffers outside the flatbuffer (over 2 GB); rewriting it is not supported")
    model.buffers = [_as_aligned(b) for b in model.buffers or []]
    total = sum(len(b.data) for b in model.buffers if b.data is not None)
    builder = flatbuffers.Builder(total + 65536)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def set_metadata(model_bytes: bytes, name: str, payload: bytes) -> bytes:
    """A copy of the model whose metadata ``name`` holds ``payload`` (replacing an existing entry)."""
    model = unpack(model_bytes)
    buffers: list[fb.BufferT] = model.buffers or []
    model.buffers = buffers
    data = np.frombuffer(payload, dtype=np.uint8).copy()
    entries = model.metadata or []
    existing = [m for m in entries if (m.name.decode() if isinstance(m.name, bytes) else m.name) == name]
    if existing:
        for extra in existing[1:]:
            entries.remove(extra)
        target = existing[0]
    else:
        target = fb.MetadataT()
        target.name = name
        entries.append(target)
    if existing and not _buffer_shared(model, target):
        buffers[target.buffer].data = data  # type: ignore[assignment]  # the object API packs arrays too
    else:
        buffer = fb.BufferT()
        buffer.data = data  # type: ignore[assignment]
        buffers.append(buffer)
        target.buffer = len(buffers) - 1
    model.metadata = entries
    return pack(model)


def _buffer_shared(model: fb.ModelT, entry: fb.MetadataT) -> bool:
    """Whether anything besides ``entry`` uses its buffer (then it must not be overwritten)."""
    index = entry.buffer
    if index is None or index <= 0 or index >= len(model.buffers or []):
        return True
    for sg in model.subgraphs or []:
        if any(t.buffer == index for t in sg.tensors or []):
            return True
    return any(m is not entry and m.buffer == index for m in model.metadata or [])


def get_metadata(model_bytes: bytes, name: str) -> bytes | None:
    """The bytes of metadata entry ``name``, or None."""
    model = fb.Model.GetRootAs(model_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() and entry.Name().decode("utf-8", "replace") == name:
            buf = model.Buffers(entry.Buffer())
            return buf.DataAsNumpy().tobytes() if buf.DataLength() else b""
    return None


def buffer_data_offsets(model_bytes: bytes) -> list[int | None]:
    """File offset at which each buffer's data starts (None for empty buffers): for alignment checks."""
    model = fb.Model.GetRootAs(model_bytes, 0)
    out: list[int | None] = []
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        if b.DataLength() == 0:
            out.append(None)
            continue
        o = b._tab.Offset(4)  # field 'data'
        out.append(b._tab.Vector(o))
    return out
